"""Evaluate explanation methods on a folder of images: the papers' faithfulness table, with costs.

Each image is shown to the classifier as it is evaluated (centre crop) and explained for its top-1
class by every method; each method's maps then go through AD/IC, ROAD (MoRF and LeRF) and the
deletion/insertion curves, batch by batch on the model's device. One clean forward per batch serves
all methods and metrics. Per-image values are kept, so a state file lets an interrupted run resume
where it stopped, and a method may run on only the first images (``method_limits``) when it is slow.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .baselines import explain_with, get_method, list_methods
from .baselines.base import warm_up
from .errors import EvaluationError, ImageLoadError
from .explainer import Explainer
from .fingerprint import files_digest, tensors_digest
from .images import find_images, image_to_tensor, load_image
from .metrics import METRICS, average_drop_increase, deletion_insertion, road, spec_for
from .metrics.base import DEFAULT_FRACTIONS, DEFAULT_ROAD_PERCENTAGES
from .metrics.curves import BASELINES
from .metrics.road import DEFAULT_NOISE
from .stopping import Stopped, check, stop_on

#: Metric groups an evaluation can run (all by default).
METRIC_GROUPS = ("adic", "road", "curves")
#: The columns of the printed table (the JSON and CSV hold every metric).
TABLE_COLUMNS = (
    "AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "MoRF", "LeRF",
    "deletion_auc", "insertion_auc", "ms_per_image", "forward_passes",
)
_SHORT = {"deletion_auc": "Del", "insertion_auc": "Ins", "ms_per_image": "ms/img", "forward_passes": "fwd/img"}

#: progress(done, total, message): units are (image, method) pairs.
Progress = Callable[[int, int, str], None]


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
        return json.dumps(payload, indent=2, allow_nan=False, default=_plain)

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
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / "results.json", folder / "results.csv"
        _write_atomically(paths[0], self.to_json())
        _write_atomically(paths[1], self.to_csv())
        return paths

    def table(self, columns: Sequence[str] = TABLE_COLUMNS) -> str:
        """The paper-style table: one line per method, arrows saying which way is better."""
        present = [c for c in columns if any(c in row for row in self.methods.values())]
        arrows = {"lower": "↓", "higher": "↑"}
        headers = ["method", *(_SHORT.get(c, c) + arrows[spec_for(c).direction] for c in present), "images"]
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


class _Tally:
    """Per-image metric values and summed costs of each method: what a state file holds."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.values: dict[str, dict[str, list[float]]] = data.get("values", {})
        self.costs: dict[str, dict[str, float]] = data.get("costs", {})
        self.counts: dict[str, dict[str, int]] = data.get("counts", {})
        self.images_done: int = data.get("images_done", 0)
        self.skipped: list[str] = data.get("skipped", [])

    def add(self, method: str, group: str, per_image: Mapping[str, torch.Tensor], images: int) -> None:
        counts = self.counts.setdefault(method, {})
        counts[group] = counts.get(group, 0) + images
        row = self.values.setdefault(method, {})
        for name, values in per_image.items():
            row.setdefault(name, []).extend(float(v) for v in values.detach().float().cpu())

    def add_cost(self, method: str, images: int, seconds: float, forwards: float, backwards: float) -> None:
        cost = self.costs.setdefault(method, {"images": 0, "seconds": 0.0, "forwards": 0.0, "backwards": 0.0})
        cost["images"] += images
        cost["seconds"] += seconds
        cost["forwards"] += forwards * images
        cost["backwards"] += backwards * images

    def summary(self, methods: Sequence[str]) -> dict[str, dict[str, float]]:
        result = {}
        for method in methods:
            cost = self.costs.get(method)
            if not cost or not cost["images"]:
                continue
            row = {name: sum(values) / len(values) for name, values in self.values.get(method, {}).items() if values}
            row["ms_per_image"] = cost["seconds"] * 1000.0 / cost["images"]
            row["forward_passes"] = cost["forwards"] / cost["images"]
            row["backward_passes"] = cost["backwards"] / cost["images"]
            row["images"] = cost["images"]
            result[method] = {name: row[name] for name in _ordered(row)}
            result[method].update({f"images_{group}": n for group, n in self.counts.get(method, {}).items()})
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values, "costs": self.costs, "counts": self.counts,
            "images_done": self.images_done, "skipped": self.skipped,
        }


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


def select_files(
    data_dir: str | os.PathLike, split: str = "all", list_file: str | os.PathLike | None = None, limit: int | None = None
) -> list[Path]:
    """The images to evaluate: every image below ``data_dir``, or those named in ``list_file`` (one path
    per line, relative to ``data_dir``), narrowed to the project's ``train``/``heldout`` split, then the
    first ``limit``."""
    from .training.data import split_files  # the project's one definition of the ImageNet split

    if list_file is not None:
        if not Path(list_file).is_file():
            raise EvaluationError(f"image list {list_file} does not exist")
        lines = Path(list_file).read_text().splitlines()
        files = [Path(data_dir) / line.strip() for line in lines if line.strip() and not line.startswith("#")]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise EvaluationError(f"{len(missing)} files named in {list_file} do not exist (first: {missing[0]})")
    else:
        try:
            files = find_images(data_dir)
        except ImageLoadError as error:
            raise EvaluationError(str(error)) from None
    files = split_files(files, split)
    if limit is not None:
        files = files[: max(0, int(limit))]
    if not files:
        raise EvaluationError(f"no images to evaluate in {data_dir} (split {split!r})")
    return files


def evaluate(
    explainer: Explainer,
    data_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    *,
    split: str = "all",
    list_file: str | os.PathLike | None = None,
    batch_size: int = 8,
    metrics: Sequence[str] = METRIC_GROUPS,
    steps: int = 50,
    baseline: str = "blur",
    road_percentages: Sequence[int] = DEFAULT_ROAD_PERCENTAGES,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    method_limits: Mapping[str, int] | None = None,
    metric_limits: Mapping[str, int] | None = None,
    metric_batch_size: int | None = None,
    seed: int = 0,
    state_path: str | os.PathLike | None = None,
    stop: threading.Event | None = None,
) -> EvaluationReport:
    """Explain the images of ``data_dir`` with each of ``methods`` (default: all) and measure the maps.

    ``method_options`` passes keywords to a method (``{"rise": {"masks": 1000}}``); ``method_limits``
    runs a method on the first N images only, ``metric_limits`` a metric group (``{"road": 50}``). With ``state_path`` the per-image results are saved after
    every batch and a run with the same settings resumes from them; ``stop`` ends the run at the next
    forward pass (the batch in progress is dropped, the report covers the images done before it).
    Cheap methods are warmed up once before their first timed batch, so their time is their own work.
    """
    methods = list(methods or list_methods())
    for method in methods:
        get_method(method)  # unknown names fail before any work
    unknown = sorted(set(metrics) - set(METRIC_GROUPS))
    if unknown or not metrics:
        raise EvaluationError(f"unknown metric group {unknown[0] if unknown else ''!r}; choose from {', '.join(METRIC_GROUPS)}")
    if baseline not in BASELINES:
        raise EvaluationError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    options = {m: dict((method_options or {}).get(m, {})) for m in methods}
    for method, given in options.items():
        accepted = get_method(method).options()
        wrong = sorted(set(given) - set(accepted))
        if wrong:
            raise EvaluationError(f"method {method!r} has no option {wrong[0]!r} (its options: {', '.join(accepted) or 'none'})")
    limits = {m: int(n) for m, n in (method_limits or {}).items() if m in methods}
    group_limits = {g: int(n) for g, n in (metric_limits or {}).items()}
    if set(group_limits) - set(METRIC_GROUPS):
        raise EvaluationError(f"unknown metric group {sorted(set(group_limits) - set(METRIC_GROUPS))[0]!r} in the limits")
    files = select_files(data_dir, split, list_file, limit)
    backbone = explainer.backbone
    settings = {
        "backbone": backbone.name,
        "head": _head_name(explainer),
        "head_tensors_sha256": tensors_digest(explainer.head.state_dict()),
        "data": str(data_dir),
        "data_files_sha256": files_digest(files),
        "split": split,
        "list_file": str(list_file) if list_file else None,
        "images": len(files),
        "geometry": "crop",
        "classes": "top-1 prediction",
        "methods": methods,
        "method_options": options,
        "method_limits": limits,
        "metric_limits": group_limits,
        "metrics": list(metrics),
        "curve_steps": steps,
        "curve_baseline": baseline,
        "road_percentages": list(road_percentages),
        "road_noise": DEFAULT_NOISE,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(explainer.device),
    }
    tally = _load_state(state_path, settings)
    total = sum(min(len(files), limits.get(m, len(files))) for m in methods)
    done = sum(min(tally.images_done, limits.get(m, len(files))) for m in methods)
    per_image = {m: get_method(m).expected_passes(explainer, **options[m])[0] for m in methods}
    preprocess = backbone.preprocess
    warmed: set[str] = set()
    unit = {"done": 0.0, "span": 0.0, "expected": 0, "seen": 0, "message": ""}

    def on_forward(images: int) -> None:  # progress inside a (method, batch) unit, from its forwards
        unit["seen"] += images
        if progress is not None and unit["expected"]:
            part = min(1.0, unit["seen"] / unit["expected"])
            progress(unit["done"] + part * unit["span"], total, unit["message"])

    try:
        with stop_on(backbone, stop, on_forward):
            for start in range(tally.images_done, len(files), batch_size):
                check(stop)
                paths = files[start : start + batch_size]
                pictures, positions, unreadable = [], [], []  # readable pictures and their indices in ``files``
                for position, path in enumerate(paths, start):
                    try:
                        pictures.append(image_to_tensor(load_image(path)))
                        positions.append(position)
                    except ImageLoadError as error:
                        unreadable.append(str(error))
                outcomes = []  # applied once every method has finished the batch: a stop drops the batch whole
                if pictures:
                    inputs = preprocess.batch(pictures, "crop", explainer.device)
                    with torch.no_grad():
                        logits = backbone(inputs).float()
                    classes = logits.argmax(dim=1)
                    for method in methods:
                        keep = _before(positions, limits.get(method))  # a limit counts files, whatever the batch size
                        if keep == 0:
                            continue
                        span = min(len(paths), limits.get(method, len(files)) - start)
                        message = f"{method} on images {start + 1}-{start + len(paths)} of {len(files)}"
                        counts = {g: _before(positions[:keep], group_limits.get(g)) for g in metrics}
                        expected = keep * per_image[method] + sum(
                            n * metric_forwards([g], steps, road_percentages) for g, n in counts.items()
                        )
                        unit.update(done=done, span=span, expected=expected, seen=0, message=message)
                        if progress is not None:
                            progress(done, total, message)
                        if method not in warmed:  # time the method's own work, not its first call's set-up
                            warm_up(method, explainer, inputs, classes, **options[method])
                            warmed.add(method)
                            unit["seen"] = 0
                        outcomes.append(_evaluate_method(
                            method, explainer, inputs[:keep], classes[:keep], logits[:keep], options[method],
                            counts, steps, baseline, road_percentages, metric_batch_size, seed,
                        ))
                        done += span
                tally.skipped.extend(unreadable)
                for outcome in outcomes:
                    outcome(tally)
                tally.images_done = start + len(paths)
                _save_state(state_path, settings, tally)
    except Stopped:
        pass  # the batch in progress is dropped; the report covers the images done
    if progress is not None and not (stop is not None and stop.is_set()):
        progress(done, total, "done")
    per_image = {method: tally.values.get(method, {}) for method in methods}
    return EvaluationReport({**settings, "images_done": tally.images_done}, tally.summary(methods), list(tally.skipped), per_image)


def metric_forwards(groups: Sequence[str], steps: int, road_percentages: Sequence[int] = DEFAULT_ROAD_PERCENTAGES) -> int:
    """Forwards per image and method of the metric ``groups``: AD/IC levels, ROAD orders x levels, curve points."""
    per_group = {"adic": len(DEFAULT_FRACTIONS), "road": 2 * len(road_percentages), "curves": 2 * (int(steps) + 1)}
    return sum(per_group[group] for group in groups)


def _evaluate_method(
    method: str,
    explainer: Explainer,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    logits: torch.Tensor,
    options: Mapping[str, Any],
    counts: Mapping[str, int],
    steps: int,
    baseline: str,
    road_percentages: Sequence[int],
    metric_batch_size: int | None,
    seed: int,
) -> Callable[[_Tally], None]:
    """Explain and measure one batch; returns what to add to the tally (once the whole batch is done)."""
    result = explain_with(method, explainer, inputs, classes, **options)
    model = explainer.backbone
    measured = []
    for group, count in counts.items():
        if count == 0:
            continue
        x, maps, c, clean = inputs[:count], result.maps[:count], classes[:count], logits[:count]
        if group == "adic":
            values = average_drop_increase(model, x, maps, c, batch_size=metric_batch_size, clean_logits=clean).per_image()
        elif group == "road":
            values = {}
            for order in ("morf", "lerf"):
                values.update(road(model, x, maps, c, road_percentages, order, metric_batch_size, seed=seed, clean_logits=clean).per_image())
        else:
            values = deletion_insertion(model, x, maps, c, steps, baseline, metric_batch_size).per_image()
        measured.append((group, values, count))

    def apply(tally: _Tally) -> None:
        tally.add_cost(method, inputs.shape[0], result.seconds, result.forward_passes, result.backward_passes)
        for group, values, count in measured:
            tally.add(method, group, values, count)

    return apply


def _before(positions: Sequence[int], limit: int | None) -> int:
    """How many of the (sorted) file positions fall within the first ``limit`` files."""
    return len(positions) if limit is None else sum(position < limit for position in positions)


def _load_state(path: str | os.PathLike | None, settings: dict[str, Any]) -> _Tally:
    """The saved tally of an interrupted run with exactly these settings (same head tensors, same files)."""
    if path is None or not Path(path).exists():
        return _Tally()
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvaluationError(f"cannot read evaluation state {path}: {' '.join(str(error).split())}") from None
    here = json.loads(json.dumps(settings, default=_plain))
    before = saved.get("settings") if isinstance(saved, dict) else None
    if not isinstance(before, dict) or not isinstance(saved.get("tally"), dict):
        raise EvaluationError(f"evaluation state {path} is not one tame_core wrote; delete it or choose another --out")
    different = [name for name in sorted(set(here) | set(before)) if before.get(name) != here.get(name)]
    if different:
        details = ", ".join(_NAMES.get(name, name) for name in different[:4])
        raise EvaluationError(
            f"evaluation state {path} was saved with other settings ({details} differ); "
            "delete it or choose another --out to start afresh"
        )
    return _Tally(saved["tally"])


#: How a state's settings mismatch is named for the user.
_NAMES = {"head_tensors_sha256": "head weights", "data_files_sha256": "image files", "data": "data folder"}


def _save_state(path: str | os.PathLike | None, settings: dict[str, Any], tally: _Tally) -> None:
    if path is not None:
        _write_atomically(Path(path), json.dumps({"settings": settings, "tally": tally.to_dict()}, default=_plain))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _head_name(explainer: Explainer) -> str | None:
    metadata = explainer.metadata
    return None if metadata is None else f"{metadata.backbone} {metadata.variant} head, layers {', '.join(metadata.layers)}"


def _ordered(row: Mapping[str, float]) -> list[str]:
    """Metric names in the registry's order, then any others, then the image count."""
    known = [name for name in METRICS if name in row]
    return [*known, *(name for name in row if name not in known and name != "images"), "images"]


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
