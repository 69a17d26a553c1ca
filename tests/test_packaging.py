"""What `pip install` gives a user who is not in a source checkout: every module, and the bundled head.

The wheel is built from this checkout (no download: the installed setuptools builds it) and installed into
a folder of its own; a child process that imports from that folder only must then find the bundled head
inside the installed package and explain a photo with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tame_core.fingerprint import bytes_sha256, sha256_of

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ("efficientnet_lite0.safetensors", "efficientnet_lite0.json")


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject.toml lists the packages (to map checkpoints/ into the wheel): a new subpackage must be added."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "tame_core").rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk | {"tame_core.checkpoints"}
    assert config["package-dir"] == {"tame_core.checkpoints": "checkpoints"}
    assert sorted(config["package-data"]["tame_core.checkpoints"]) == sorted(BUNDLED)
    assert config["package-data"]["tame_core"] == ["py.typed"] and (ROOT / "tame_core" / "py.typed").is_file()


@pytest.mark.slow
def test_an_installed_wheel_carries_the_bundled_head_and_explains_with_it(tmp_path, sample_images):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("tame_core-*.whl")
    import tame_core

    assert wheel.name.startswith(f"tame_core-{tame_core.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        assert "tame_core/py.typed" in archive.namelist()  # PEP 561: mypy and pyright use our type hints
        for name in BUNDLED:
            assert bytes_sha256(archive.read(f"tame_core/checkpoints/{name}")) == sha256_of(ROOT / "checkpoints" / name)

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    photo = tmp_path / "coffee.png"
    Image.fromarray(sample_images["coffee"]).save(photo)
    env = {k: v for k, v in os.environ.items() if k != "TAME_CHECKPOINTS"}
    env["PYTHONPATH"] = str(site)  # ahead of the checkout's editable install
    where = subprocess.run(
        [sys.executable, "-c", "import tame_core.heads as h; print(h.__file__); print(h.bundled_head_path('efficientnet_lite0'))"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert where.returncode == 0, where.stderr
    module, head = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(site) and head == site / "tame_core" / "checkpoints" / "efficientnet_lite0.safetensors"

    explain = subprocess.run(
        [sys.executable, "-m", "tame_core", "explain", str(photo), "--out", str(tmp_path / "maps"), "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert explain.returncode == 0, explain.stderr
    assert "espresso" in explain.stdout or "cup" in explain.stdout, explain.stdout  # the bundled head on its real classifier
    saved = np.load(tmp_path / "maps" / "coffee.npy")
    assert saved.ndim == 2 and float(saved.min()) == 0.0 and float(saved.max()) == 1.0
