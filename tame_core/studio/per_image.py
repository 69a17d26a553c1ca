"""The Evaluate page's per-image view: small thumbnails of each image and of each method's map, kept as
the evaluation measures them, the sortable per-image table built from them, and the paired comparison.

Thumbnails are written beside the evaluation's state file (``<state>.thumbs/``, inside the session's
``evaluations`` folder, so the session's scratch accounting and clean-up cover them) as the maps are
measured, so a stopped run that resumes still has the thumbnails of the images it did before the stop.
Only the first :data:`MAX_THUMBNAIL_IMAGES` images get them: the table, every row of which the browser
receives at once, stays a few megabytes whatever the folder's size.
"""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..atomic import write_atomically
from ..errors import EvaluationError, TameError
from ..evaluation import TABLE_COLUMNS, EvaluationReport
from ..evaluation.report import COSTS
from ..images import tensor_to_pixels
from ..maps import overlay, resize_maps
from ..metrics import get_metric
from ..reading import read_regular
from .render import png_bytes

#: The long side of a thumbnail in pixels (a table row shows it smaller; hovering shows it whole).
THUMBNAIL_PX = 64
#: Images that get thumbnails, in the evaluation's order (the table lists every row regardless).
MAX_THUMBNAIL_IMAGES = 200
#: The largest thumbnail file read back (a 64 px PNG is a few kilobytes).
_MAX_THUMBNAIL_BYTES = 1 << 20
#: The metric columns of the per-image table and the comparison: the printed table's, without the costs.
HEADLINE_METRICS = tuple(name for name in TABLE_COLUMNS if name not in COSTS)
#: The per-image table's: without the map area, which is read beside the means (and a 1280 px window
#: has no room for it there); the per-image download keeps it.
PER_IMAGE_METRICS = tuple(name for name in HEADLINE_METRICS if name != "area")


#: What "within noise" means, for people who do not read bootstrap intervals.
WITHIN_NOISE = (
    "“Within noise” means the range of plausible differences includes zero: on these images the two methods "
    "cannot be told apart, and another handful of images could tip the result either way (more images "
    "narrow the range). “Better” or “worse” means the whole range lies on one side of zero."
)


def column_title(name: str) -> str:
    """A table heading that says which way is better: ``AD100 ↓``, ``IC100 ↑`` (``area``: neither way)."""
    if name in ("method", "images"):
        return name
    return f"{name} {get_metric(name).arrow}".rstrip()


def thumbnail_folder(state: str | Path) -> Path:
    """Where the thumbnails of the evaluation saved in ``state`` live: a folder beside it."""
    state = Path(state)
    return state.with_name(state.stem + ".thumbs")


def _name(key: str) -> str:
    """A thumbnail's file name for an image key (a relative path, of any characters)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".png"


def picture_path(folder: Path, key: str) -> Path:
    """The thumbnail of an image (its centre crop) in a thumbnail folder."""
    return folder / "pictures" / _name(key)


def map_path(folder: Path, key: str, method: str) -> Path:
    """The thumbnail of ``method``'s map over an image in a thumbnail folder."""
    return folder / "maps" / hashlib.sha256(method.encode("utf-8")).hexdigest()[:16] / _name(key)


class ThumbnailKeeper:
    """``evaluate``'s ``on_maps``: writes each image's crop and each method's overlay as small PNGs
    (through :func:`~tame_core.atomic.write_atomically`) for the first ``limit`` images it sees."""

    def __init__(self, folder: str | Path, limit: int = MAX_THUMBNAIL_IMAGES, size: int = THUMBNAIL_PX) -> None:
        self.folder, self.limit, self.size = Path(folder), limit, size
        pictures = self.folder / "pictures"
        self.kept = {path.name for path in pictures.glob("*.png")} if pictures.is_dir() else set()  # a resume's

    def __call__(self, keys: Sequence[str], method: str, inputs: torch.Tensor, maps: torch.Tensor) -> None:
        wanted, new = [], 0
        for i, key in enumerate(keys):  # images already kept, then new ones while there is room
            if _name(key) in self.kept or len(self.kept) + new < self.limit:
                new += _name(key) not in self.kept
                wanted.append(i)
        if not wanted:
            return
        index = torch.tensor(wanted, device=inputs.device)
        height, width = inputs.shape[-2:]
        scale = self.size / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = F.interpolate(inputs.index_select(0, index).float(), size=size, mode="bilinear", antialias=True)
        pictures = tensor_to_pixels(small)
        saliency = resize_maps(maps.index_select(0, index.to(maps.device)).float(), size).cpu().numpy()
        for row, i in enumerate(wanted):
            name = _name(keys[i])
            if name not in self.kept:
                write_atomically(picture_path(self.folder, keys[i]), png_bytes(pictures[row]))
                self.kept.add(name)
            write_atomically(map_path(self.folder, keys[i], method), png_bytes(overlay(pictures[row], saliency[row])))


def data_uri(path: Path) -> str | None:
    """A PNG thumbnail as a ``data:`` URI for an image column; None when it was never written."""
    if not path.is_file():
        return None
    try:
        data = read_regular(path, _MAX_THUMBNAIL_BYTES, EvaluationError, path.name)
    except TameError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def per_image_rows(report: EvaluationReport, folder: str | Path | None, limit: int = MAX_THUMBNAIL_IMAGES) -> list[dict[str, Any]]:
    """One row per image and method: the image's key, the method, its thumbnail and the method's map
    (data URIs, for the first ``limit`` images; None otherwise) and every headline metric present, under
    its :func:`column_title`."""
    rows = report.per_image()
    metrics = [name for name in PER_IMAGE_METRICS if any(name in row for row in rows)]
    order: dict[str, int] = {}
    for row in rows:
        order.setdefault(row["image"], len(order))
    thumbs = Path(folder) if folder is not None else None
    out = []
    for row in rows:
        key, shown = row["image"], thumbs is not None and order[row["image"]] < limit
        out.append({
            "image": key,
            "method": row["method"],
            "picture": data_uri(picture_path(thumbs, key)) if shown else None,
            "map": data_uri(map_path(thumbs, key, row["method"])) if shown else None,
            **{column_title(name): _finite(row.get(name)) for name in metrics},
        })
    return out


def image_count(report: EvaluationReport) -> int:
    """How many distinct images the per-image rows cover."""
    return len({row["image"] for row in report.image_rows})


def default_pair(methods: Sequence[str]) -> tuple[str, str] | None:
    """The comparison shown first: TAME (or the first method) against the first other; None for one method."""
    if len(methods) < 2:
        return None
    first = "tame" if "tame" in methods else methods[0]
    return first, next(m for m in methods if m != first)


def comparison_rows(report: EvaluationReport, a: str, b: str) -> list[dict[str, Any]]:
    """:meth:`EvaluationReport.compare` of ``a`` against ``b`` on the headline metrics, in their order, as
    table rows: ``metric`` (with its arrow), ``mean difference``, ``low`` and ``high`` (the 95 % interval),
    ``verdict`` (for ``a``) and ``images``."""
    rows = {row["metric"]: row for row in report.compare(a, b)}
    return [
        {"metric": column_title(name), "mean difference": rows[name]["mean"], "low": rows[name]["low"],
         "high": rows[name]["high"], "verdict": rows[name]["verdict"], "images": rows[name]["images"]}
        for name in HEADLINE_METRICS if name in rows
    ]


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
