"""The resumable part of an evaluation run: one row per image and method, saved after every batch.

A state file holds the run's settings beside its tally, so a run resumes only what the same settings
(same head tensors, same files) started, and says which settings differ otherwise.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from ..atomic import write_atomically
from ..errors import EvaluationError
from ..reading import read_json

#: Largest evaluation state read back: per-image values of every method for a large folder.
MAX_STATE_BYTES = 512 * 2**20


class Tally:
    """What a state file holds: one row per finished (image, method), keyed by the image's path relative to
    the data folder, and the images that could not be read. An image is finished when its rows are in."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        # {"image", "method", "ms_per_image", "forward_passes", "backward_passes", "values": {group: {metric: value}}}
        self.rows: list[dict[str, Any]] = data.get("rows", [])
        self.done: list[str] = data.get("done", [])  # keys of the images finished (read or not), in the order done
        self.skipped: list[str] = data.get("skipped", [])  # one message per unreadable image
        #: Images passed through the backbone for the saved batches, over every attempt (warm-ups left out):
        #: a resume that redid a finished image would show here.
        self.forwards: int = data.get("forwards", 0)

    def finished(self) -> set[str]:
        """Keys of the images done: measured by every method that takes them, or unreadable."""
        return set(self.done)

    @property
    def images_done(self) -> int:
        return len(self.done)

    def add(self, images: Sequence[str], rows: Sequence[dict[str, Any]], skipped: Sequence[str] = (), forwards: int = 0) -> None:
        """One batch: the keys of all its images, their rows, the messages of the unreadable ones and the
        images it passed through the backbone."""
        self.done.extend(images)
        self.rows.extend(rows)
        self.skipped.extend(skipped)
        self.forwards += forwards

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "done": self.done, "skipped": self.skipped, "images_done": self.images_done,
                "forwards": self.forwards}


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
_NAMES = {"head_tensors_sha256": "head weights", "data_files_sha256": "image files", "data": "data folder", "map_blur": "map blur"}


def checked_tally(tally: dict[str, Any], settings: dict[str, Any], path: Any) -> dict[str, Any]:
    """A saved tally whose every field has the type and range tame_core writes, or one EvaluationError line
    (a hand-edited ``"images_done": "2"``, a list, a negative count, a row whose values are not numbers)."""
    images = settings.get("images")
    done, rows = tally.get("done", []), tally.get("rows", [])
    problem = None
    if not _whole(images):
        problem = "settings.images is not a whole number of 0 or more"
    elif not (_whole(tally.get("images_done", 0)) and tally.get("images_done", 0) <= images):
        problem = f"images_done must be a whole number from 0 to {images}, got {_shown(tally.get('images_done'))}"
    elif not (isinstance(done, list) and len(done) <= images and all(isinstance(x, str) for x in done)):
        problem = f"done must be a list of at most {images} image names"
    elif not (isinstance(rows, list) and all(_row(row) for row in rows)):
        problem = "rows must be objects with an image, a method, costs of 0 or more and numbers as values"
    elif not _whole(tally.get("forwards", 0)):
        problem = f"forwards must be a whole number of 0 or more, got {_shown(tally.get('forwards'))}"
    elif not (isinstance(tally.get("skipped", []), list) and all(isinstance(x, str) for x in tally.get("skipped", []))):
        problem = "skipped must be a list of texts"
    if problem:
        raise EvaluationError(f"evaluation state {path} was changed by hand or is damaged ({problem}); delete it to start afresh")
    return tally


def _row(row: Any) -> bool:
    """One saved row: {"image", "method", costs, "values": {group: {metric: number or null}}}."""
    if not (isinstance(row, dict) and isinstance(row.get("image"), str) and isinstance(row.get("method"), str)):
        return False
    costs = ("ms_per_image", "forward_passes", "backward_passes")
    if not all(row.get(n) is None or (_number(row[n]) and math.isfinite(row[n]) and row[n] >= 0) for n in costs):
        return False
    values = row.get("values", {})
    return _mapping_of(values, lambda group: _mapping_of(group, lambda v: v is None or _number(v)))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mapping_of(value: Any, check: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 30 else text[:27] + "..."


def save_state(path: str | os.PathLike | None, settings: dict[str, Any], tally: Tally) -> None:
    if path is not None:
        write_atomically(path, json.dumps({"settings": settings, "tally": tally.to_dict()}, default=plain))


def plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: paths as text."""
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
