"""`tame explain` over inputs longer than one batch (issue 11): every good image written, one line per bad one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _tame(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tame_core", *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_explain_three_batches_with_a_bad_file_and_duplicate_stems(tmp_path, sample_images, random_head_path):
    """8 inputs, --batch-size 3 (does not divide 7 good ones), mixed sizes, a bad file in the middle, same stems."""
    chelsea, coffee, rocket = (sample_images[k] for k in ("chelsea", "coffee", "rocket"))
    inputs = [
        _save(tmp_path / "a" / "same.png", chelsea[:200, :260]),
        _save(tmp_path / "b" / "same.png", coffee[:240, :300]),
        _save(tmp_path / "same-2.png", rocket[:200, :260]),
        _save(tmp_path / "c" / "cat.png", chelsea[50:250, 100:360]),
        tmp_path / "broken.png",
        _save(tmp_path / "d" / "cat.png", coffee[:200, :260]),
        _save(tmp_path / "tall.png", rocket[:300, :200]),
        _save(tmp_path / "e" / "same.png", chelsea[:240, :300]),
    ]
    inputs[4].write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "maps"
    result = _tame("explain", *map(str, inputs), "--head", str(random_head_path), "--out", str(out),
                   "--device", "cpu", "--batch-size", "3")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {inputs[4]}: ")
    stems = ["same", "same-3", "same-2", "cat", None, "cat-2", "tall", "same-4"]
    for path, stem in zip(inputs, stems):
        if stem is None:
            continue
        with Image.open(path) as picture:
            width, height = picture.size
        saliency = np.load(out / f"{stem}.npy")
        assert saliency.shape == (height, width), (path, stem)
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.size == (width, height)
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"{s}.npy" for s in stems if s)
    explained = [line.split(": explained")[0] for line in result.stdout.splitlines() if ": explained" in line]
    assert sorted(explained) == sorted(str(p) for p in inputs if p != inputs[4])
