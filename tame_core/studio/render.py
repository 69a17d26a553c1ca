"""From explanations to what the page shows and offers for download: overlays, heatmaps, files, tables."""

from __future__ import annotations

import io
import re
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..explainer import Explanation
from ..maps import colorize, overlay

#: Blue (lowers the map), white (no effect), red (raises it): signed values on a symmetric scale.
DIVERGING = np.array([[33, 102, 172], [247, 247, 247], [178, 24, 43]], dtype=np.float32)


def class_label(index: int, class_names: Sequence[str]) -> str:
    """How a class reads in pickers and captions: ``tabby (281)``."""
    return f"{class_names[index]} ({index})"


def prediction_rows(explanation: Explanation, k: int = 5) -> list[dict[str, object]]:
    """The image's top-``k`` classes as table rows (rank, class label, index, probability)."""
    names = explanation.explainer.backbone.class_names
    return [
        {"rank": rank, "class": class_label(index, names), "index": index, "probability": probability}
        for rank, (index, _, probability) in enumerate(explanation.top_k(k)[0], start=1)
    ]


def saliency(explanation: Explanation, k: int = 0) -> np.ndarray:
    """Map ``k`` of the (single-image) explanation at the picture's size, float32 in [0, 1]."""
    return explanation.map_at_original(0, k)


def overlay_image(pixels: np.ndarray, saliency_map: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """The heatmap blended over the picture (RGB uint8); ``alpha`` is the heatmap's opacity."""
    return overlay(pixels, saliency_map, alpha, colormap)


def heatmap_image(saliency_map: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """The raw map in colour, for showing beside the overlay."""
    return colorize(saliency_map, colormap)


def most_salient(pixels: np.ndarray, saliency_map: np.ndarray, fraction: float = 0.25, dim: float = 0.2) -> np.ndarray:
    """The picture with only the ``fraction`` of its pixels the map ranks highest at full brightness."""
    if saliency_map.shape[:2] != pixels.shape[:2]:
        size = (pixels.shape[1], pixels.shape[0])
        saliency_map = cv2.resize(saliency_map.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    keep = saliency_map >= np.quantile(saliency_map, 1.0 - fraction)
    return np.where(keep[..., None], pixels[:, :, :3], (pixels[:, :, :3] * dim).astype(np.uint8))


def signed_colorize(values: np.ndarray, scale: float) -> np.ndarray:
    """Signed values (H, W) as RGB ``uint8`` on the symmetric scale [-scale, +scale]: blue, white, red."""
    position = np.clip(np.nan_to_num(values) / max(float(scale), 1e-12), -1.0, 1.0) + 1.0  # 0..2
    low = np.floor(np.minimum(position, 1.999)).astype(int)
    weight = (position - low)[..., None]
    return (DIVERGING[low] * (1 - weight) + DIVERGING[low + 1] * weight + 0.5).astype(np.uint8)


def signed_overlay(pixels: np.ndarray, values: np.ndarray, scale: float, alpha: float = 0.6) -> np.ndarray:
    """Signed values blended over the picture (resized to it), as :func:`signed_colorize` colours them."""
    if values.shape[:2] != pixels.shape[:2]:
        values = cv2.resize(values.astype(np.float32), (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
    colours = signed_colorize(values, scale)
    return cv2.addWeighted(colours, alpha, pixels[:, :, :3].astype(np.uint8), 1.0 - alpha, 0.0)


@lru_cache(maxsize=32)
def colour_scale(labels: tuple[str, ...], colormap: str | None = "jet", width: int = 360, height: int = 14) -> np.ndarray:
    """A horizontal colour bar with ``labels`` spread evenly beneath it (RGB ``uint8``).

    ``colormap`` names a map's colormap (values 0..1 left to right); None draws the signed scale of
    :func:`signed_colorize` (-scale..+scale).
    """
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None].repeat(height, axis=0)
    bar = colorize(ramp, colormap) if colormap is not None else signed_colorize(ramp * 2 - 1, 1.0)
    font = ImageFont.load_default(size=13)
    canvas = Image.new("RGB", (width + 40, height + 22), "white")
    canvas.paste(Image.fromarray(bar), (20, 2))
    draw = ImageDraw.Draw(canvas)
    for position, label in enumerate(labels):
        x = 20 + round(position * (width - 1) / max(1, len(labels) - 1))
        draw.line([(x, height + 2), (x, height + 5)], fill="black")
        text_width = draw.textlength(label, font=font)
        left = min(max(0, x - text_width / 2), canvas.width - text_width)
        draw.text((left, height + 6), label, fill="black", font=font)
    bar_image = np.asarray(canvas)
    bar_image.flags.writeable = False  # shared by every caller (cached)
    return bar_image


#: Below this probability a class's map shows where the model would look for it, not what it sees.
UNLIKELY_CLASS = 0.01
#: A picture smaller than this on a side is blown up many times before the model sees it.
TINY_SIDE = 32


def unlikely_class_note(probability: float) -> str | None:
    """The caveat under a map of a class the model all but rules out (None when there is nothing to say)."""
    if probability >= UNLIKELY_CLASS:
        return None
    return f"The model gives this class {probability:.1%}: the map shows where it would look, not what it sees."


def tiny_picture_note(pixels: np.ndarray) -> str | None:
    """A word on pictures under :data:`TINY_SIDE` pixels a side (None for the others)."""
    height, width = pixels.shape[:2]
    if min(height, width) >= TINY_SIDE:
        return None
    return (
        f"This picture is only {width}×{height} pixels: the model sees it blown up, so its answer and its map "
        "rest on very little."
    )


def map_size_note(size: tuple[int, int], original_size: tuple[int, int]) -> str:
    """What a downloaded map's size is, said plainly when it is not the picture's own (a large picture is
    worked on downscaled)."""
    (height, width), (original_h, original_w) = size, original_size
    text = f"float32 array {height}×{width} in [0, 1]"
    if (height, width) == (original_h, original_w):
        return text + ", the picture's size"
    return (
        f"{text}: the picture is {original_h}×{original_w}, worked on at {height}×{width}; scale the map by "
        f"{original_w / width:.2f} to lay it on the original"
    )


def delta_text(change: float, digits: int = 1, unit: str = "") -> str | None:
    """A metric's change as ``+1.2 pts``, or None (no arrow, no colour) when it rounds to nothing."""
    if round(float(change), digits) == 0:
        return None
    return f"{change:+.{digits}f}{unit}"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` into memory: the map as float32 for download."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def file_stem(name: str) -> str:
    """A safe download-file stem from an image's name (``My photo.JPG`` -> ``My_photo``)."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or "image"
