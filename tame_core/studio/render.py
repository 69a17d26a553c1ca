"""From explanations to what the page shows and offers for download: overlays, heatmaps, files, tables."""

from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np
from PIL import Image

from ..explainer import Explanation
from ..maps import colorize, overlay


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
