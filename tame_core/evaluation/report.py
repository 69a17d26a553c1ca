"""What an evaluation reports: one row per image and method, the averaged row per method computed from
them (a table, JSON and CSV), and how much of a difference between two methods is noise (``compare``)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..atomic import write_atomically
from ..errors import EvaluationError
from ..metrics import get_metric, list_metrics
from .state import plain

#: The file of per-image rows ``tame evaluate`` writes beside ``results.json``.
PER_IMAGE_FILE = "per_image.csv"

#: The cost columns of a per-image row (the rest are metric values).
COSTS = ("ms_per_image", "forward_passes", "backward_passes")

#: The columns of the printed table (the JSON and CSV hold every metric).
TABLE_COLUMNS = (
    "AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "area", "MoRF", "LeRF",
    "deletion_auc", "insertion_auc", "ms_per_image", "forward_passes",
)
_SHORT = {"deletion_auc": "Del", "insertion_auc": "Ins", "ms_per_image": "ms/img", "forward_passes": "fwd/img"}


@dataclass
class EvaluationReport:
    """One row of averaged metrics per method, and the settings that produced them."""

    settings: dict[str, Any]
    methods: dict[str, dict[str, float]]
    skipped: list[str] = field(default_factory=list)
    image_rows: list[dict[str, Any]] = field(default_factory=list)  # one per (image, method): see ``Tally.rows``

    @classmethod
    def from_rows(
        cls, settings: dict[str, Any], rows: Sequence[dict[str, Any]], methods: Sequence[str], skipped: Sequence[str] = ()
    ) -> "EvaluationReport":
        """The report of per-image rows: every mean in it is computed from them."""
        return cls(settings, summarize(rows, methods), list(skipped), list(rows))

    def per_image(self) -> list[dict[str, Any]]:
        """One flat dict per image and method: ``image``, ``method``, every metric value, the costs."""
        return [
            {"image": row["image"], "method": row["method"],
             **{name: value for group in row["values"].values() for name, value in group.items()},
             **{name: row[name] for name in COSTS}}
            for row in self.image_rows
        ]

    def per_image_csv(self) -> str:
        rows = self.per_image()
        names: list[str] = []
        for row in rows:
            names.extend(name for name in row if name not in names)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(value) for key, value in row.items()})
        return buffer.getvalue()

    def compare(self, a: str, b: str, resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
        """Method ``a`` against ``b`` on every metric both have, over the images both measured: the mean
        paired difference ``a - b``, its 95 % bootstrap interval over images and a verdict for ``a``
        (``better``, ``worse`` or ``within noise``; ``larger``/``smaller`` for the area) by the metric's declared direction."""
        rows = {method: {row["image"]: row for row in self.per_image() if row["method"] == method} for method in (a, b)}
        for method in (a, b):
            if not rows[method]:
                raise EvaluationError(f"--compare: no per-image results for method '{method}' (methods run: {', '.join(self.methods)})")
        names = _ordered({name: 0 for row in rows[a].values() for name in row if name not in ("image", "method", *COSTS)})
        out = []
        for name in names[:-1]:  # the last is "images"
            pairs = [(row[name], rows[b][image][name]) for image, row in rows[a].items()
                     if image in rows[b] and _number(row.get(name)) and _number(rows[b][image].get(name))]
            if not pairs:
                continue
            interval = bootstrap_difference([p[0] for p in pairs], [p[1] for p in pairs], resamples, seed)
            out.append({"metric": name, "images": len(pairs), **interval, "verdict": _verdict(name, interval)})
        return out

    def comparison_table(self, a: str, b: str) -> str:
        """:meth:`compare` as text: one line per metric."""
        lines = [f"{a} - {b}: mean difference over the same images, 95% bootstrap interval, verdict for {a}"]
        for row in self.compare(a, b):
            name = row["metric"] + get_metric(row["metric"]).arrow
            lines.append(f"{name:<16} {row['mean']:>+10.4f}  [{row['low']:+.4f}, {row['high']:+.4f}]  {row['verdict']:<13} ({row['images']} images)")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per method: ``method`` and each metric by name (NaN, where a metric had no value, as None)."""
        return [{"method": method, **{k: _finite(v) for k, v in values.items()}} for method, values in self.methods.items()]

    def to_json(self) -> str:
        directions = {
            name: get_metric(name).direction for row in self.methods.values() for name in row if not name.startswith("images")
        }
        payload = {"settings": self.settings, "results": self.rows(), "directions": directions, "skipped": self.skipped}
        return json.dumps(payload, indent=2, allow_nan=False, default=plain)

    def to_csv(self) -> str:
        names: list[str] = []
        for values in self.methods.values():
            names.extend(name for name in values if name not in names)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["method", *names], lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({key: _cell(value) for key, value in row.items()})
        return buffer.getvalue()

    def save(self, out: str | os.PathLike) -> tuple[Path, Path, Path]:
        """Write ``results.json``, ``results.csv`` and ``per_image.csv`` into the folder ``out``."""
        folder = Path(out)
        paths = folder / "results.json", folder / "results.csv", folder / PER_IMAGE_FILE
        write_atomically(paths[0], self.to_json())
        write_atomically(paths[1], self.to_csv())
        write_atomically(paths[2], self.per_image_csv())
        return paths

    def table(self, columns: Sequence[str] = TABLE_COLUMNS) -> str:
        """The paper-style table: one line per method, arrows saying which way is better."""
        present = [c for c in columns if any(c in row for row in self.methods.values())]
        headers = ["method", *(_SHORT.get(c, c) + get_metric(c).arrow for c in present), "images"]
        lines = [
            [method, *(_format(row.get(c)) for c in present), str(int(row.get("images", 0)))]
            for method, row in self.methods.items()
        ]
        widths = [max(len(cells[i]) for cells in [headers, *lines]) for i in range(len(headers))]

        def render(cells: list[str]) -> str:
            return "  ".join(cells[0].ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells))

        total = self.settings.get("images")
        notes = [f"{group}: first {n} images only" for group, n in self.settings.get("metric_limits", {}).items() if total and n < total]
        return "\n".join([render(headers), *(render(line) for line in lines), *notes])


def bootstrap_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """The mean of ``a - b`` over paired per-image values, and a ``level`` interval for it from resampling
    the images with replacement: how much of a difference between two methods is noise."""
    if len(a) != len(b) or not len(a):
        raise EvaluationError(f"paired values needed: got {len(a)} and {len(b)}")
    differences = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(differences), (resamples, len(differences)), generator=generator)
    means = differences[picks].mean(dim=1)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return {"mean": round(float(differences.mean()), 4), "low": round(low, 4), "high": round(high, 4)}


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """One row per method from per-image rows: each metric's mean over the images that have it, the mean
    costs, the image count and the count of each metric group."""
    result = {}
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        if not mine:
            continue
        columns: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for row in mine:
            for group, values in row["values"].items():
                counts[group] = counts.get(group, 0) + 1
                for name, value in values.items():
                    columns.setdefault(name, []).append(float("nan") if value is None else value)
            for name in COSTS:
                columns.setdefault(name, []).append(row[name])
        means: dict[str, float] = {name: sum(values) / len(values) for name, values in columns.items()}
        means["images"] = len(mine)
        result[method] = {name: means[name] for name in _ordered(means)}
        result[method].update({f"images_{group}": n for group, n in counts.items()})
    return result


def _ordered(row: dict[str, Any]) -> list[str]:
    """Metric names in the registry's order, then any others, then the image count."""
    known = [name for name in list_metrics() if name in row]
    return [*known, *(name for name in row if name not in known and name != "images"), "images"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _verdict(name: str, interval: dict[str, float]) -> str:
    """``better``/``worse`` when the interval leaves out 0 (by the metric's direction), else ``within noise``;
    ``larger``/``smaller`` for a metric where neither way is better (the map area)."""
    if interval["low"] <= 0.0 <= interval["high"]:
        return "within noise"
    higher = interval["low"] > 0.0
    if get_metric(name).direction == "neither":
        return "larger" if higher else "smaller"
    return "better" if higher == (get_metric(name).direction == "higher") else "worse"


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
