"""The resumable part of an evaluation run: one row per image and method, saved after every batch.

A state file holds the run's settings beside its tally, so a run resumes only what the same settings
(same head tensors, same files) started, and says which settings differ otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_atomically
from ..errors import EvaluationError


class Tally:
    """What a state file holds: one row per finished (image, method), keyed by the image's path relative to
    the data folder, and the images that could not be read. An image is finished when its rows are in."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        # {"image", "method", "ms_per_image", "forward_passes", "backward_passes", "values": {group: {metric: value}}}
        self.rows: list[dict[str, Any]] = data.get("rows", [])
        self.done: list[str] = data.get("done", [])  # keys of the images finished (read or not), in the order done
        self.skipped: list[str] = data.get("skipped", [])  # one message per unreadable image

    def finished(self) -> set[str]:
        """Keys of the images done: measured by every method that takes them, or unreadable."""
        return set(self.done)

    @property
    def images_done(self) -> int:
        return len(self.done)

    def add(self, images: Sequence[str], rows: Sequence[dict[str, Any]], skipped: Sequence[str] = ()) -> None:
        """One batch: the keys of all its images, their rows and the messages of the unreadable ones."""
        self.done.extend(images)
        self.rows.extend(rows)
        self.skipped.extend(skipped)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "done": self.done, "skipped": self.skipped, "images_done": self.images_done}


def load_state(path: str | os.PathLike | None, settings: dict[str, Any]) -> Tally:
    """The saved tally of an interrupted run with exactly these settings (same head tensors, same files)."""
    if path is None or not Path(path).exists():
        return Tally()
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvaluationError(f"cannot read evaluation state {path}: {' '.join(str(error).split())}") from None
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
    return Tally(saved["tally"])


#: How a state's settings mismatch is named for the user.
_NAMES = {"head_tensors_sha256": "head weights", "data_files_sha256": "image files", "data": "data folder"}


def save_state(path: str | os.PathLike | None, settings: dict[str, Any], tally: Tally) -> None:
    if path is not None:
        write_atomically(path, json.dumps({"settings": settings, "tally": tally.to_dict()}, default=plain))


def plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: paths as text."""
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
