"""Shared fixtures: the real embedded backbone, CC0 sample photos, and heads saved to temp folders.

Nothing here needs ../shared or the network; tests that use the ImageNet samples take them from
``shared_samples`` and are skipped where the folder is absent.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# huggingface_hub reads these when it is imported (timm imports it), so they are set before anything else:
# every test talks to the local fake hub and keeps its cache in a temporary folder, never the user's.
FAKE_HUB_PORT = _free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{FAKE_HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="tame-test-hf-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TAME_STUDIO_DIR"] = tempfile.mkdtemp(prefix="tame-test-studio-")  # the app's session folders, never the real ones
# Both hold hundreds of MB after a run (the app's sessions keep their heads): a run that left them behind filled
# the disk of the machine that runs the suite again and again.
for _scratch in (os.environ["HF_HOME"], os.environ["TAME_STUDIO_DIR"]):
    atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
os.environ.pop("TAME_ALLOWED_ROOTS", None)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

SHARED_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"


@pytest.fixture(scope="session")
def fake_hub():
    """A Hub stand-in on 127.0.0.1 at the address HF_ENDPOINT names (see tests/fake_hub.py)."""
    from fake_hub import FakeHub

    hub = FakeHub(FAKE_HUB_PORT).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def sample_images() -> dict[str, np.ndarray]:
    """scikit-image's CC0 photos as RGB uint8 arrays."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "coffee", "rocket", "astronaut")}


@pytest.fixture(scope="session")
def lite0():
    """The embedded EfficientNet-Lite0 with its real (bundled) weights, on the CPU."""
    from tame_core import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def random_head_path(tmp_path_factory, lite0) -> Path:
    """An untrained head for lite0's default layers, saved as a checkpoint pair."""
    from tame_core import TAMEHead, save_head
    from tame_core.card import metadata_for
    from tame_core.taps import check_layers

    torch.manual_seed(0)
    channels = [info.channels for info in check_layers(lite0, lite0.default_layers)]
    head = TAMEHead(channels, lite0.num_classes).eval()
    path = tmp_path_factory.mktemp("heads") / "lite0_random.safetensors"
    save_head(head, metadata_for(head, lite0, lite0.default_layers), path)
    return path


@pytest.fixture(scope="session")
def explainer(lite0, random_head_path):
    """lite0 with the untrained head: real logits, deterministic maps."""
    from tame_core import Explainer

    return Explainer.load(random_head_path, backbone=lite0, device="cpu")


@pytest.fixture
def shared_samples() -> Path:
    """The 1000 ImageNet samples beside the checkout; tests using them skip where they are absent."""
    if not SHARED_SAMPLES.is_dir():
        pytest.skip("../shared/data/imagenet-samples is not available")
    return SHARED_SAMPLES


@pytest.fixture(autouse=True)
def no_background_timing_left_running():
    """A forward-time refresh that a test started (studio.costs measures in a background thread) must end
    before the next test: it runs a batch of 8 on the shared backbone, which a later test's taps would see."""
    yield
    costs = sys.modules.get("tame_core.studio.costs")
    deadline = time.monotonic() + 60
    while costs is not None and costs._REFRESHING and time.monotonic() < deadline:
        time.sleep(0.01)
