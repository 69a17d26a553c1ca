"""The resumable part of an evaluation run: per-image values and costs, saved after every batch.

A state file holds the run's settings beside its tally, so a run resumes only what the same settings
(same head tensors, same files) started, and says which settings differ otherwise.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import torch

from ..atomic import write_atomically
from ..errors import EvaluationError
from ..reading import read_json
from ..metrics import METRICS

#: Largest evaluation state read back: per-image values of every method for a large folder.
MAX_STATE_BYTES = 512 * 2**20


class Tally:
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


def load_state(path: str | os.PathLike | None, settings: dict[str, Any]) -> Tally:
    """The saved tally of an interrupted run with exactly these settings (same head tensors, same files)."""
    if path is None or not os.path.lexists(path):
        return Tally()
    saved = read_json(path, EvaluationError, MAX_STATE_BYTES, label=f"evaluation state {path}")
    here = json.loads(json.dumps(settings, default=plain))
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
    return Tally(checked_tally(saved["tally"], saved["settings"], path))


#: How a state's settings mismatch is named for the user.
_NAMES = {"head_tensors_sha256": "head weights", "data_files_sha256": "image files", "data": "data folder"}


def checked_tally(tally: dict[str, Any], settings: dict[str, Any], path: Any) -> dict[str, Any]:
    """A saved tally whose every field has the type and range tame_core writes, or one EvaluationError line
    (a hand-edited ``"images_done": "2"``, a list, a negative count, a cost that is not a number)."""
    images = settings.get("images")
    problem = None
    if not _whole(images):
        problem = "settings.images is not a whole number of 0 or more"
    elif not (_whole(tally.get("images_done", 0)) and tally.get("images_done", 0) <= images):
        problem = f"images_done must be a whole number from 0 to {images}, got {_shown(tally.get('images_done'))}"
    elif not _mapping_of(tally.get("values", {}), lambda row: _mapping_of(row, lambda v: isinstance(v, list) and all(_number(x) for x in v))):
        problem = "values must map each method to lists of numbers"
    elif not _mapping_of(tally.get("costs", {}), _cost):
        problem = "costs must map each method to images, seconds, forwards and backwards (numbers of 0 or more)"
    elif not _mapping_of(tally.get("counts", {}), lambda row: _mapping_of(row, _whole)):
        problem = "counts must map each method to whole numbers of 0 or more"
    elif not (isinstance(tally.get("skipped", []), list) and all(isinstance(x, str) for x in tally.get("skipped", []))):
        problem = "skipped must be a list of texts"
    if problem:
        raise EvaluationError(f"evaluation state {path} was changed by hand or is damaged ({problem}); delete it to start afresh")
    return tally


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cost(value: Any) -> bool:
    names = ("images", "seconds", "forwards", "backwards")
    return isinstance(value, dict) and all(_number(value.get(n)) and math.isfinite(value[n]) and value[n] >= 0 for n in names)


def _mapping_of(value: Any, check: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 30 else text[:27] + "..."


def save_state(path: str | os.PathLike | None, settings: dict[str, Any], tally: Tally) -> None:
    if path is not None:
        write_atomically(path, json.dumps({"settings": settings, "tally": tally.to_dict()}, default=plain))


def _ordered(row: Mapping[str, float]) -> list[str]:
    """Metric names in the registry's order, then any others, then the image count."""
    known = [name for name in METRICS if name in row]
    return [*known, *(name for name in row if name not in known and name != "images"), "images"]


def plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: paths as text."""
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
