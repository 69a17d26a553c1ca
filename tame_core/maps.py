"""Saliency-map plumbing shared by TAME, the comparison methods, the metrics, the CLI and the app.

Every method's maps take one shape: (B, H, W) floats in [0, 1] (TAME adds a class axis, (B, K, H, W)).
"""

from __future__ import annotations

import functools
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


#: The largest map blur a card may ask for: sigma a quarter of the input's shorter side (beyond it a map is a blob).
MAX_MAP_BLUR = 0.25


def blur_sigma_pixels(fraction: float, size: Sequence[int]) -> float:
    """The blur's sigma in pixels for maps of ``size`` (H, W): ``fraction`` of the shorter side.

    One definition for the blur itself and for every line that tells people how much the maps are blurred.
    """
    return float(fraction) * min(int(size[0]), int(size[1]))


def blur_maps(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Gaussian blur of (..., H, W) maps, sigma ``fraction`` x the shorter side (0: the maps as they are).

    Why: a head's map ranks pixels inside its 14x14 cells by bilinear ripples; a blur of about half a
    cell makes the ranking follow regions, which deletion and insertion reward (README, issue 25). The
    kernel is cut at 3 sigma and the borders mirrored, as torchvision's ``gaussian_blur`` does. It is
    :func:`resize_and_blur` to the maps' own size.
    """
    return resize_and_blur(maps, maps.shape[-2:], fraction)


def resize_and_blur(maps: torch.Tensor, size: Sequence[int], fraction: float) -> torch.Tensor:
    """``blur_maps(resize_maps(maps, size), fraction)`` as one matrix product per axis.

    Bilinear resizing and the blur are both linear and separable, so each axis folds into one (out, in)
    matrix: a 14x14 map becomes a blurred 224x224 one in about 0.8 M multiply-adds instead of 22 M, and a
    class switch in the app costs what it did before the blur. (Measured side by side on one CPU thread,
    a 224x224 map: 13 ms blurred by two 1-D convolutions, 1.5 ms by two matrix products, 0.13 ms resized
    and blurred from 14x14 in one.)
    """
    if not fraction:
        return resize_maps(maps, size)
    height, width = int(size[0]), int(size[1])
    sigma = blur_sigma_pixels(fraction, (height, width))
    radius = min(int(round(3 * sigma)), height - 1, width - 1)
    if radius < 1:
        return resize_maps(maps, size)
    rows = _resize_blur_matrix(maps.shape[-2], height, sigma, radius, maps.device)
    columns = _resize_blur_matrix(maps.shape[-1], width, sigma, radius, maps.device)
    return rows @ maps.float() @ columns.T


@functools.lru_cache(maxsize=32)
def _resize_blur_matrix(size_in: int, size_out: int, sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """One axis of :func:`resize_and_blur`, kept: building it costs 10x applying it to one map."""
    return _blur_matrix(size_out, sigma, radius, device) @ _resize_matrix(size_in, size_out, device)


def _resize_matrix(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """The (size_out, size_in) matrix of 1-D linear resizing as ``resize_maps`` does it (half-pixel centres)."""
    units = torch.eye(size_in, device=device).view(size_in, 1, size_in)
    if size_in == size_out:
        return units.view(size_in, size_in)
    return F.interpolate(units, size=size_out, mode="linear", align_corners=False).view(size_in, size_out).T


def _blur_matrix(size: int, sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """The (size, size) matrix of a 1-D Gaussian blur with mirrored borders: the blur of each unit signal."""
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    units = torch.eye(size, device=device).view(size, 1, size)
    responses = F.conv1d(F.pad(units, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
    return responses.view(size, size).T


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
