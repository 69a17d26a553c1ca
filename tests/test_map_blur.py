"""The card's map blur (HeadMetadata.map_blur): a Gaussian at the model's input, applied when maps are made.

Known answers for the blur itself, the card field's checks, the explainer applying it (and nothing when
it is 0, bit for bit), and the evaluation state refusing to mix blurred and unblurred maps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

import tame_core.explainer as explainer_module
from tame_core import Explainer, load_head, save_head
from tame_core.card import metadata_for
from tame_core.errors import EvaluationError, TrainingError
from tame_core.evaluation.state import Tally, load_state, save_state
from tame_core.maps import blur_maps, blur_sigma_pixels, minmax_normalize, resize_and_blur, resize_maps
from tame_core.taps import LayerTaps
from tame_core.training import LossWeights, TrainConfig, batch_loss
from tame_core.training.trainer import public_recipe
from test_training_losses import probe_backbone


def test_a_point_blurs_into_the_gaussian_of_the_asked_sigma():
    """A unit point in a 41x41 map at sigma 2 (fraction 2/41): the separable kernel's outer product."""
    point = torch.zeros(1, 41, 41)
    point[0, 20, 20] = 1.0
    out = blur_maps(point, 2 / 41)[0]
    offsets = torch.arange(-6, 7, dtype=torch.float32)  # radius 3 sigma
    kernel = torch.exp(-0.5 * (offsets / 2) ** 2)
    kernel = kernel / kernel.sum()
    assert torch.allclose(out[14:27, 14:27], torch.outer(kernel, kernel), atol=1e-7)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)  # nothing lost: the point is far from the borders
    assert float(out[20, 20]) == pytest.approx(1 / (2 * math.pi * 4), rel=0.02)  # the continuous Gaussian's peak


def test_on_a_wide_map_sigma_is_the_fraction_of_the_shorter_side_and_the_hub_card_says_the_same(random_head_path):
    """A 30x50 map at fraction 0.1: sigma 3 px (of the 30 rows), the same along both axes."""
    assert blur_sigma_pixels(0.1, (30, 50)) == pytest.approx(3.0)
    point = torch.zeros(1, 30, 50)
    point[0, 15, 25] = 1.0
    out = blur_maps(point, 0.1)[0]
    offsets = torch.arange(-9, 10, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / 3) ** 2)
    kernel = kernel / kernel.sum()
    assert torch.allclose(out[6:25, 16:35], torch.outer(kernel, kernel), atol=1e-7)

    from tame_core.checkpoint import read_metadata
    from tame_core.hub import model_card

    metadata = replace(read_metadata(random_head_path), input_size=[30, 50], map_blur=0.1)
    assert "sigma 0.1000 of the input's shorter side: 3.0 px at 30" in model_card(metadata, "team/x")


def test_the_blur_is_torchvisions_gaussian_blur_at_the_bundled_heads_sigma():
    """Sigma 8 at 224 (the bundled card's 8/224): torchvision's 49-tap kernel with mirrored borders, in two passes."""
    maps = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ours = blur_maps(maps, 8 / 224)
    theirs = gaussian_blur(maps.view(-1, 1, 224, 224), [49, 49], [8.0, 8.0]).view_as(maps)
    assert ours.shape == maps.shape
    assert float((ours - theirs).abs().max()) < 1e-5


@pytest.mark.parametrize("size", [(224, 224), (224, 299), (300, 200), (14, 14)])
def test_resizing_and_blurring_in_one_product_per_axis_is_resizing_then_blurring(size):
    maps = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(1))
    folded = resize_and_blur(maps, size, 8 / 224)
    assert folded.shape == (2, 3, *size)
    assert float((folded - blur_maps(resize_maps(maps, size), 8 / 224)).abs().max()) < 1e-5
    assert torch.equal(resize_and_blur(maps, size, 0.0), resize_maps(maps, size))  # no blur: the resize, bit for bit


def test_no_blur_is_the_same_tensor_and_a_constant_map_stays_constant():
    maps = torch.rand(1, 2, 9, 7)
    assert blur_maps(maps, 0.0) is maps
    assert torch.allclose(blur_maps(torch.full((3, 9, 7), 0.25), 0.25), torch.full((3, 9, 7), 0.25))  # radius cut to the map
    assert blur_maps(maps, 0.25).shape == maps.shape


def test_a_card_keeps_its_map_blur_and_the_explainer_applies_it(tmp_path, explainer, sample_images, monkeypatch):
    """Saved and loaded with the head; the maps are the unblurred ones blurred (min-max commutes with the linear blur)."""
    metadata = metadata_for(explainer.head, explainer.backbone, explainer.layers, map_blur=0.05)
    save_head(explainer.head, metadata, tmp_path / "blurred")
    path = tmp_path / "blurred.safetensors"
    _, loaded = load_head(path)
    assert loaded.map_blur == 0.05
    blurred = Explainer(explainer.backbone, explainer.head, explainer.layers, loaded)
    assert blurred.map_blur == 0.05
    image = sample_images["chelsea"]
    plain = explainer.explain(image, classes=[[281, 285]]).maps
    maps = blurred.explain(image, classes=[[281, 285]]).maps
    expected = minmax_normalize(blur_maps(plain, 0.05))
    assert float((maps - expected).abs().max()) < 1e-5
    assert float((maps - plain).abs().max()) > 0.01  # it did change the maps
    switched = blurred.explain(image, classes=[[281]]).with_classes([[285]])  # the app's class switch: the fuser only
    assert torch.allclose(switched.maps[:, 0], maps[:, 1], atol=1e-6)
    # every class at once goes through the fuser in chunks: each chunk blurred alike
    whole = blurred.explain(image, classes=[[281, 285, 1, 2, 3]])
    monkeypatch.setattr(explainer_module, "CHUNK_ELEMENTS", 1)  # one class per chunk: five chunks
    assert torch.allclose(blurred.explain(image, classes=[[281, 285, 1, 2, 3]]).maps, whole.maps, atol=1e-6)
    assert torch.allclose(whole.maps[:, :2], maps, atol=1e-6)


def test_without_a_blur_the_maps_are_the_fused_maps_resized_and_scaled_bit_for_bit(explainer, sample_images):
    assert explainer.map_blur == 0.0
    explanation = explainer.explain(sample_images["chelsea"], classes=[[281, 285]])
    fused = explainer.head.fuse(explanation.branch_features, explanation.classes, None)
    assert torch.equal(explanation.maps, minmax_normalize(resize_maps(fused, explanation.inputs.shape[-2:])))


@pytest.mark.parametrize("value", [-0.01, 0.3, float("nan")])
def test_train_refuses_a_map_blur_out_of_range_in_one_line(tmp_path, value):
    with pytest.raises(TrainingError, match=r"^map_blur must be from 0 to 0.25 \(a fraction of the input's shorter side\), got "):
        TrainConfig(data=[tmp_path], out=tmp_path / "h", map_blur=value)


def test_an_evaluation_state_of_unblurred_maps_is_not_resumed_with_blurred_ones(tmp_path):
    state = tmp_path / "evaluation_state.json"
    settings = {"backbone": "efficientnet_lite0", "images": 2}
    save_state(state, settings, Tally())
    load_state(state, settings)  # the same settings resume
    with pytest.raises(EvaluationError, match=r"saved with other settings \(map blur differ\)"):
        load_state(state, {**settings, "map_blur": 8 / 224})


def test_evaluation_settings_name_the_blur_only_when_there_is_one(explainer):
    from tame_core.evaluation import EvaluationConfig
    from tame_core.evaluation.run import run_settings

    config = EvaluationConfig(methods=("tame",), data="x")
    assert "map_blur" not in run_settings(explainer, config, [])
    blurred = Explainer(explainer.backbone, explainer.head, explainer.layers, replace(explainer.metadata, map_blur=0.05))
    assert run_settings(blurred, config, [])["map_blur"] == 0.05


def test_the_app_says_when_a_head_blurs_its_maps(explainer, random_head_path):
    from tame_core.studio import LoadedModel, ModelChoice

    plain = LoadedModel(ModelChoice(head=str(random_head_path)), explainer)
    assert "blurred" not in plain.describe()  # a card without a blur: nothing said
    blurred = Explainer(explainer.backbone, explainer.head, explainer.layers, replace(explainer.metadata, map_blur=8 / 224))
    assert LoadedModel(ModelChoice(head=str(random_head_path)), blurred).describe().endswith("; maps blurred (sigma 8 px)")


def test_training_with_blurred_masks_masks_the_image_with_the_blurred_sigmoid_map():
    """--blur-masks: the preserving and destroying forwards see the sigmoid map upsampled with the card's blur."""
    backbone = probe_backbone()  # 8x8 input, mean colour 0.5
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0], images[1, 2] = 1.0, 1.0  # red, blue: the probe predicts classes 0 and 2
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 2, 2) / 4 - 3  # image i's 2x2 map for class j

    def head(features, classes):
        return logits[:, classes].clone().requires_grad_()

    own = torch.sigmoid(logits[[0, 1], [0, 2]])[:, None]  # (2, 1, 2, 2): each image's map for its own class
    for blur in (0.25, 0.0):
        backbone.net.seen.clear()
        batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images, LossWeights(destroy=1.0, destroy_fill="black"),
                   mask_blur=blur)
        _, masked, removed = backbone.net.seen
        mask = resize_and_blur(own, (8, 8), blur)  # blur 0: the plain bilinear upsampling
        assert torch.allclose(masked, backbone.normalize(images * mask), atol=1e-6), blur
        assert torch.allclose(removed, backbone.normalize(images * (1 - mask)), atol=1e-6), blur
    sharp, blurred = resize_maps(own, (8, 8)), resize_and_blur(own, (8, 8), 0.25)
    assert (sharp - blurred).abs().max() > 0.01  # the two cases differ, so the test tells them apart


def test_blurred_training_masks_need_a_blur_and_enter_the_resume_key_and_card_only_when_on(tmp_path):
    with pytest.raises(TrainingError, match="blur_masks blurs the training masks by map_blur: give a map_blur above 0"):
        TrainConfig(data=[tmp_path], out=tmp_path / "h", blur_masks=True)
    plain = TrainConfig(data=[tmp_path], out=tmp_path / "h", map_blur=0.05)
    blurred = replace(plain, blur_masks=True)
    assert "blur_masks" not in plain.schedule_key() and "map_blur" not in plain.schedule_key()  # older states resume
    assert blurred.schedule_key() == {**plain.schedule_key(), "blur_masks": True, "map_blur": 0.05}
    assert "blur_masks" not in public_recipe(plain) and public_recipe(blurred)["blur_masks"] is True
