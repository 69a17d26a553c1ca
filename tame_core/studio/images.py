"""The pictures a session works on: uploads, checked (the sample photos are in :mod:`.samples`).

Every picture becomes an :class:`ActiveImage`: upright 8-bit RGB pixels plus a content hash. The hash
is the key of all per-image work (explanations, curves, comparisons), so the same photo uploaded
twice, or uploaded and picked from the gallery, is explained once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import ImageLoadError
from ..images import load_image, original_size

#: File types the image uploader offers (what browsers and Pillow both read well).
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp")

#: Largest image upload in MB: checked here as well as by the uploader widget, so no path skips it.
MAX_UPLOAD_MB = 25

#: Longest side kept for work, display and downloads. Models see a 224-px short side, so a larger copy
#: would only cost memory in the session and time in every overlay.
MAX_SIDE = 1024

#: Longest side of the previews (side-by-side tiles) and thumbnails (sidebar, galleries).
PREVIEW_SIDE = 480
THUMBNAIL_SIDE = 192


@dataclass(frozen=True, eq=False)
class ActiveImage:
    """One picture in a session: what to call it, its pixels and the hash its results are stored under."""

    name: str
    pixels: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB, at most MAX_SIDE a side
    digest: str
    source: str  # "upload" or "sample"
    original_size: tuple[int, int]  # (height, width) before any downscaling
    preview: np.ndarray = field(repr=False)  # (h, w, 3) uint8, at most PREVIEW_SIDE a side
    thumbnail: np.ndarray = field(repr=False)  # (h, w, 3) uint8, at most THUMBNAIL_SIDE a side

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def pixels_digest(pixels: np.ndarray) -> str:
    """A short content hash of decoded pixels (shape included), independent of the file format."""
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()[:16]


def active_image(picture: Image.Image | np.ndarray, name: str, source: str) -> ActiveImage:
    """Wrap an RGB picture, downscaled so its longest side is at most :data:`MAX_SIDE`, with smaller copies."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))
    original = original_size(image)  # before a reduced decode, if there was one
    image = image.convert("RGB")
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8).copy()
    return ActiveImage(
        name, pixels, pixels_digest(pixels), source, original, _shrunk(image, PREVIEW_SIDE), _shrunk(image, THUMBNAIL_SIDE)
    )


def _shrunk(image: Image.Image, side: int) -> np.ndarray:
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


def read_upload(name: str, data: bytes, max_mb: float = MAX_UPLOAD_MB) -> ActiveImage:
    """Decode an uploaded file; any problem is an :class:`ImageLoadError` naming the file."""
    if len(data) > max_mb * 1024 * 1024:
        raise ImageLoadError(f"{name}: {len(data) / 2**20:.1f} MB is over the {max_mb:g} MB upload limit")
    # decoded no smaller than the longest side kept (and so over twice any model's input on the short side)
    return active_image(load_image(data, name=name, min_short_side=MAX_SIDE), name, "upload")
