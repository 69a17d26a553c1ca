"""Heads that start as class activation maps (CAM), per-class and tied, and tied heads through the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tame_core import Explainer, load_head
from tame_core.head import TAMEHead, TiedTAMEHead
from tame_core.maps import minmax_normalize, resize_maps
from tame_core.taps import check_layers
from tame_core.training import TrainConfig, init_from_cam, train_head
from tame_core.training.init import classifier_of, new_head
from tame_core.training.state import load_state

LAYERS = ["blocks.2", "blocks.4", "bn2"]


@pytest.fixture(scope="module")
def photos(lite0, sample_images) -> torch.Tensor:
    pictures = [torch.from_numpy(np.ascontiguousarray(sample_images[n])).permute(2, 0, 1) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    return lite0.preprocess.batch(pictures, "crop")


@pytest.mark.parametrize("fuser", ["class", "tied", "tied_residual"])
def test_a_cam_started_head_gives_the_class_activation_maps(lite0, photos, fuser):
    channels = [info.channels for info in check_layers(lite0, LAYERS)]
    torch.manual_seed(0)
    head = new_head(channels, lite0, fuser=fuser)
    assert isinstance(head, TiedTAMEHead) == (fuser != "class")
    init_from_cam(head, lite0, LAYERS, photos)
    explainer = Explainer(lite0, head.eval(), LAYERS)
    explanation = explainer.explain(photos, classes=[[281], [967], [812], [0]], geometry="input")
    # the reference: classifier row . bn2 features + bias at 7x7, then the head's own upsampling chain
    pooled = explainer.features(photos)[1][-1]  # the bn2 branch starts as the identity
    with explainer._taps:
        lite0(photos)
    torch.testing.assert_close(pooled, explainer._taps.features[-1].float(), atol=1e-6, rtol=0)
    classifier = classifier_of(lite0)
    classes = explanation.classes[:, 0]
    cams = torch.einsum("bchw,bc->bhw", pooled, classifier.weight[classes]) + classifier.bias[classes][:, None, None]
    fused = F.interpolate(cams[:, None], size=head.resolution(explanation.branch_features[0].shape[-2:]), mode="bilinear", align_corners=False)
    expected = minmax_normalize(resize_maps(fused, (224, 224)))
    torch.testing.assert_close(explanation.maps, expected, atol=1e-5, rtol=0)
    # and the other branches start switched off in effect: the maps do not change without them
    torch.testing.assert_close(explanation.with_branches([False, False, True]).maps, explanation.maps, atol=1e-5, rtol=0)


def test_tied_training_saves_a_plain_head_with_the_same_maps(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(7):
        Image.fromarray((rng.random((48, 52 + i, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    config = TrainConfig(data=[folder], out=tmp_path / "tied.v1.safetensors", backbone="timm:test_efficientnet", weights="random", recipe="paper",
                         fuser="tied", epochs=1, batch_size=3, progress=False, lr=0.05)
    out = train_head(config)
    plain, card = load_head(out)
    assert type(plain) is TAMEHead and card.training["recipe"]["fuser"] == "tied"
    state = load_state(config.state_path)
    tied = TiedTAMEHead(plain.channels, state["head"]["fuser.class_weight"], state["head"]["fuser.class_bias"])
    tied.load_state_dict(state["head"])
    tied.eval()
    assert not torch.equal(tied.fuser.projection, torch.zeros_like(tied.fuser.projection))  # it trained
    features = [torch.rand(2, c, 6, 6) for c in plain.channels]
    with torch.no_grad():
        torch.testing.assert_close(plain(features), tied(features), atol=1e-5, rtol=1e-5)
