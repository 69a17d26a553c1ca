"""What an evaluation reports: one averaged row per method, as a table, JSON and CSV, and how much of a
difference between two methods is noise."""

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
from ..metrics import spec_for
from .state import plain

#: The columns of the printed table (the JSON and CSV hold every metric).
TABLE_COLUMNS = (
    "AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "MoRF", "LeRF",
    "deletion_auc", "insertion_auc", "ms_per_image", "forward_passes",
)
_SHORT = {"deletion_auc": "Del", "insertion_auc": "Ins", "ms_per_image": "ms/img", "forward_passes": "fwd/img"}


@dataclass
class EvaluationReport:
    """One row of averaged metrics per method, and the settings that produced them."""

    settings: dict[str, Any]
    methods: dict[str, dict[str, float]]
    skipped: list[str] = field(default_factory=list)
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> metric -> one value per image

    def rows(self) -> list[dict[str, Any]]:
        """One dict per method: ``method`` and each metric by name (NaN, where a metric had no value, as None)."""
        return [{"method": method, **{k: _finite(v) for k, v in values.items()}} for method, values in self.methods.items()]

    def to_json(self) -> str:
        directions = {
            name: spec_for(name).direction for row in self.methods.values() for name in row if not name.startswith("images")
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

    def save(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``results.json`` and ``results.csv`` into the folder ``out``."""
        folder = Path(out)
        paths = folder / "results.json", folder / "results.csv"
        write_atomically(paths[0], self.to_json())
        write_atomically(paths[1], self.to_csv())
        return paths

    def table(self, columns: Sequence[str] = TABLE_COLUMNS) -> str:
        """The paper-style table: one line per method, arrows saying which way is better."""
        present = [c for c in columns if any(c in row for row in self.methods.values())]
        headers = ["method", *(_SHORT.get(c, c) + spec_for(c).arrow for c in present), "images"]
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
