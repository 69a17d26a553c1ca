"""Folders of random-pixel PNGs: the test data for evaluation, training and stop tests (no labels needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def noise_folder(folder: Path, count: int, bad_at: int | None = None, seed: int = 0) -> Path:
    """``count`` 72x96 noise PNGs named img0.png...; the one at ``bad_at`` holds bytes that are no image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        path = folder / f"img{index}.png"
        if index == bad_at:
            path.write_bytes(b"this is not a png")
        else:
            Image.fromarray((rng.random((72, 96, 3)) * 255).astype(np.uint8)).save(path)
    return folder
