"""Saliency-map plumbing shared by TAME, the comparison methods, the metrics, the CLI and the app.

Every method's maps take one shape: (B, H, W) floats in [0, 1] (TAME adds a class axis, (B, K, H, W)).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: OpenCV colormaps offered for overlays, by the names users know from matplotlib.
COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each map (over its last two axes) to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    high = flat.amax(dim=-1, keepdim=True)
    scaled = (flat - low) / (high - low).clamp_min(eps)
    return scaled.view_as(maps)


def resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (..., h, w) maps to ``size`` (H, W); values stay within their range."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.view(*lead, *size)


def colorize(saliency: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map (H, W) as an RGB ``uint8`` heatmap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    scaled = np.clip(np.nan_to_num(saliency) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a heatmap of ``saliency`` over an RGB ``uint8`` image of the same (H, W)."""
    if image.shape[:2] != saliency.shape[:2]:
        saliency = cv2.resize(saliency.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = colorize(saliency, colormap)
    return cv2.addWeighted(heat, alpha, image[:, :, :3].astype(np.uint8), 1.0 - alpha, 0.0)
