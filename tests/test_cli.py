"""The `tame` command: explain, layers, backbones; bad files give one line each and no traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tame_core.cli import main


def _save(path: Path, array: np.ndarray, **params) -> Path:
    Image.fromarray(array).save(path, **params)
    return path


def test_explain_writes_maps_and_overlays(tmp_path, sample_images, random_head_path, capsys):
    chelsea = _save(tmp_path / "chelsea.jpg", sample_images["chelsea"])
    rocket = _save(tmp_path / "rocket.png", sample_images["rocket"])
    out = tmp_path / "out"
    code = main(["explain", str(chelsea), str(rocket), "--head", str(random_head_path), "--out", str(out), "--device", "cpu"])
    assert code == 0
    for stem, picture in (("chelsea", sample_images["chelsea"]), ("rocket", sample_images["rocket"])):
        saliency = np.load(out / f"{stem}.npy")
        assert saliency.shape == picture.shape[:2] and saliency.dtype == np.float16
        assert saliency.min() >= 0 and saliency.max() <= 1 and saliency.max() > 0.9
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.size == (picture.shape[1], picture.shape[0]) and overlay.mode == "RGB"
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2 and lines[0].startswith(f"{chelsea}: explained '") and "top-5: " in lines[0]
    assert lines[0].count("%") == 5


def test_explain_a_named_class_and_exif_rotated_photo(tmp_path, sample_images, random_head_path, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: the map must be at the upright size
    photo = _save(tmp_path / "phone.jpg", sample_images["coffee"], exif=exif)
    code = main(["explain", str(photo), "--head", str(random_head_path), "--class", "tabby", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 0
    assert np.load(tmp_path / "phone.npy").shape == (600, 400)
    assert "explained 'tabby'" in capsys.readouterr().out


def test_same_stems_do_not_overwrite(tmp_path, sample_images, random_head_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _save(tmp_path / "a" / "cat.jpg", sample_images["chelsea"])
    second = _save(tmp_path / "b" / "cat.jpg", sample_images["coffee"])
    assert main(["explain", str(first), str(second), "--head", str(random_head_path), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "o" / "cat.npy").shape == (300, 451)
    assert np.load(tmp_path / "o" / "cat-2.npy").shape == (400, 600)


def test_unknown_class_is_one_line(tmp_path, sample_images, random_head_path, capsys):
    photo = _save(tmp_path / "x.jpg", sample_images["chelsea"])
    code = main(["explain", str(photo), "--head", str(random_head_path), "--class", "unicorn", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: unknown class 'unicorn'; did you mean 'corn', 'junco', 'acorn'?"


def test_layers_and_backbones(capsys):
    assert main(["layers", "--backbone", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "* blocks.2 " in out and "40 ch    28x28  spatial" in out and "classifier" not in out
    assert main(["layers", "--all"]) == 0
    assert "classifier" in capsys.readouterr().out
    assert main(["backbones"]) == 0
    assert "vit_b_16" in capsys.readouterr().out


def test_bad_files_one_line_each_no_traceback(tmp_path, sample_images, random_head_path):
    """The real console entry point over a folder of troublemakers and good photos."""
    good = _save(tmp_path / "good.jpg", sample_images["astronaut"])
    gray = _save(tmp_path / "gray.png", sample_images["coffee"][:, :, 0])
    rgba = _save(tmp_path / "alpha.png", np.dstack([sample_images["rocket"], np.full(sample_images["rocket"].shape[:2], 128, np.uint8)]))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(sample_images["chelsea"]).convert("CMYK").save(cmyk)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(sample_images["coffee"]).save(buffer, format="JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[:2000])
    missing = tmp_path / "missing.jpg"

    files = [good, text, gray, empty, rgba, truncated, cmyk, missing]
    tame = Path(sys.executable).with_name("tame")
    command = [str(tame)] if tame.exists() else [sys.executable, "-m", "tame_core"]
    result = subprocess.run(
        [*command, "explain", *map(str, files), "--head", str(random_head_path), "--out", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {text}: not an image (or a format Pillow cannot read)",
        f"error: {empty}: empty file (0 bytes)",
        f"error: {truncated}: corrupt or truncated image (image file is truncated (36 bytes not processed))",
        f"error: {missing}: no such file",
    ]
    written = sorted(p.name for p in (tmp_path / "out").glob("*.npy"))
    assert written == ["alpha.npy", "cmyk.npy", "good.npy", "gray.npy"]
    assert result.stdout.count("top-5") == 4


def test_bounded_maps_line_up_with_the_full_size_map(tmp_path, sample_images, random_head_path):
    """A 2400 x 1800 JPEG (EXIF-rotated): by default its outputs are 1024 px on the long side, decoded
    reduced; ``--full-size`` gives the picture's size from a full decode. Both show the same map."""
    exif = Image.Exif()
    exif[0x0112] = 6
    big = np.asarray(Image.fromarray(sample_images["chelsea"]).resize((2400, 1800), Image.Resampling.BICUBIC))
    photo = _save(tmp_path / "phone.jpg", big, quality=95, exif=exif)
    base = ["explain", str(photo), "--head", str(random_head_path), "--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "small")]) == 0
    assert main([*base, "--out", str(tmp_path / "full"), "--full-size"]) == 0
    small, full = np.load(tmp_path / "small" / "phone.npy"), np.load(tmp_path / "full" / "phone.npy")
    assert small.shape == (1024, 768) and full.shape == (2400, 1800) and small.dtype == full.dtype == np.float16
    with Image.open(tmp_path / "small" / "phone_overlay.png") as overlay:
        assert overlay.size == (768, 1024)
    shrunk = cv2.resize(full.astype(np.float32), (768, 1024), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(np.float32) - shrunk).max() < 0.05  # the model saw a draft decode, not the full one
    assert np.corrcoef(small.ravel(), shrunk.ravel())[0, 1] > 0.999
    for flipped in (shrunk[::-1], shrunk[:, ::-1]):  # a map upside down or mirrored would not pass
        assert np.abs(small.astype(np.float32) - flipped).max() > 0.2


def test_version_names_this_package_and_what_decides_its_numbers(capsys):
    from importlib.metadata import version

    import pytest

    import tame_core

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        f"tame-core {tame_core.__version__}, torch {version('torch')}, torchvision {version('torchvision')}, "
        f"timm {version('timm')}, Python {sys.version.split()[0]}"
    )
    assert version("tame-core") == tame_core.__version__  # pyproject.toml reads the one version there is
