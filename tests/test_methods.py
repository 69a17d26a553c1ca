"""Baselines behind one interface: known answers on a toy backbone, shapes and ranges on a CNN and a ViT."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tame_core import load_backbone
from tame_core.backbones import Backbone
from tame_core.methods import PassCounter, explain_with, get_method, list_methods
from tame_core.methods.base import timed_repeats, warm_up
from tame_core.methods.cam import AblationCamMethod, CamMethod, ScoreCamMethod, default_target_layer, silent_tqdm
from tame_core.errors import EvaluationError, LayerError
from tame_core.preprocessing import Preprocess

SIZE = 16
REGION = (slice(2, 8), slice(4, 12))


class RegionNet(nn.Module):
    """Class 0's logit is the mean brightness (a 1x1 conv feature) over REGION; class 1's is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        nn.init.constant_(self.features.weight, 1 / 3)
        region = torch.zeros(1, 1, SIZE, SIZE)
        region[:, :, REGION[0], REGION[1]] = 1.0
        self.register_buffer("region", region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.features(x)
        score = (feature * self.region).sum(dim=(1, 2, 3)) / self.region.sum()
        return torch.stack([8 * (score - 0.5), torch.zeros_like(score)], dim=1)


@pytest.fixture(scope="module")
def toy() -> Backbone:
    identity = Preprocess(input_size=(SIZE, SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Backbone("toy", RegionNet(), identity, ["evidence", "other"], ["features"])


def region_mask() -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[REGION] = True
    return mask


def test_methods_in_table_order():
    assert list_methods() == [
        "tame", "gradcam", "gradcam++", "xgradcam", "scorecam", "ablationcam", "layercam", "eigencam", "hirescam", "rise",
    ]


@pytest.mark.parametrize("method", ["hirescam", "layercam"])
def test_elementwise_gradient_cams_find_the_region(toy, method):
    """Gradient x activation is non-zero exactly on REGION, so the normalised map is its indicator."""
    images = torch.full((2, 3, SIZE, SIZE), 0.8)
    result = explain_with(toy, images, [0, 0], method)
    expected = region_mask().float().expand(2, SIZE, SIZE)
    assert torch.allclose(result.maps, expected, atol=1e-5)
    assert result.forward_passes == 1.0 and result.backward_passes == 1.0
    assert result.seconds > 0 and result.ms_per_image == pytest.approx(result.seconds * 500)
    other = explain_with(toy, images, 1, method)  # a constant logit: no gradient anywhere
    assert float(other.maps.abs().max()) == 0.0


def test_rise_is_seeded_counts_its_masks_and_finds_the_region(toy):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    result = explain_with(toy, images, 0, "rise", masks=600, cells=4, batch_size=256)
    assert result.forward_passes == 600 and result.backward_passes == 0
    inside = result.maps[:, region_mask()].mean(dim=1)
    outside = result.maps[:, ~region_mask()].mean(dim=1)
    assert bool((inside > outside + 0.2).all())
    again = explain_with(toy, images, 0, "rise", masks=600, cells=4, batch_size=7)
    assert torch.allclose(result.maps, again.maps, atol=1e-5)
    other = explain_with(toy, images, 0, "rise", masks=600, cells=4, seed=1)
    assert not torch.allclose(result.maps, other.maps, atol=1e-3)


def test_scorecam_makes_a_forward_per_channel(toy):
    result = explain_with(toy, torch.rand(3, 3, SIZE, SIZE), 0, "scorecam")
    assert result.forward_passes == 2.0 and result.backward_passes == 0.0  # the CAM forward + 1 channel
    assert get_method("scorecam").expected_passes(toy) == (2, 0)
    assert get_method("rise").expected_passes(toy, masks=600) == (600, 0)


def test_chunked_score_cam_gives_upstream_score_cam_maps(explainer):
    """Our Score-CAM builds its masked copies batch by batch; the maps must be pytorch-grad-cam's own."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tame_core.methods.cam import ChunkedScoreCAM
    from tame_core.taps import find_module

    backbone = explainer.backbone
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    layer = [find_module(backbone.net, "blocks.1")]  # 24 channels: quick
    targets = [ClassifierOutputTarget(281), ClassifierOutputTarget(409)]
    maps = {}
    for name, cam_class in (("upstream", pytorch_grad_cam.ScoreCAM), ("chunked", ChunkedScoreCAM)):
        with cam_class(model=backbone, target_layers=layer) as cam:
            cam.batch_size = 5  # batches that do not divide the channels
            maps[name] = cam(input_tensor=images, targets=targets)
    assert maps["chunked"].shape == (2, 64, 80) and float(maps["chunked"].std()) > 0
    np.testing.assert_allclose(maps["chunked"], maps["upstream"], atol=1e-5)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_cams_of_a_forward_per_channel_batch_them_small_on_a_cpu(explainer, method):
    """A CPU forward is fastest per image in small batches (Lite0 at 224 x 299: 42 ms at 4, 67 ms at
    pytorch-grad-cam's 16), so the channel forwards go ``default_batch_size`` at a time unless told (a
    batch that does not divide the channels included); the
    cost estimate measures its forward time at that batch."""
    from tame_core.batching import default_batch_size

    batches: list[int] = []
    handle = explainer.backbone.net.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        explain_with(explainer, torch.rand(1, 3, 64, 80), 281, method, layer="blocks.1")  # 24 channels
        default = list(batches)
        batches.clear()
        explain_with(explainer, torch.rand(1, 3, 64, 80), 281, method, layer="blocks.1", batch_size=5)  # 24 = 4 x 5 + 4
    finally:
        handle.remove()
    small = default_batch_size(torch.device("cpu"))
    assert small == 4 and max(default) == small and default.count(small) == 24 // small
    assert max(batches) == 5 and batches.count(5) == 4 and sum(b for b in batches if b > 1) == 24  # every channel once
    chosen = get_method(method)
    assert chosen.forward_batch(explainer) == small and chosen.forward_batch(explainer, batch_size=5) == 5
    assert get_method("gradcam").forward_batch(explainer) is None  # one forward of the image batch
    assert get_method("rise").forward_batch(explainer) == small


def test_cheap_methods_are_warmed_up_and_timed_several_times(toy):
    images = torch.rand(2, 3, SIZE, SIZE)
    with PassCounter(toy.net) as counter:
        warm_up(toy, images, 0, "gradcam")
    assert counter.forwards == 2  # the batch as it will be timed, untimed
    with PassCounter(toy.net) as counter:
        warm_up(toy, images, 0, "rise", masks=50)
    assert counter.forwards == 0  # an expensive method warms itself up in its first batches
    result = timed_repeats(toy, images, 0, "gradcam", repeats=3, min_seconds=0.0)
    assert len(result.repeats) == 3 and result.seconds == sorted(result.repeats)[1] and result.forward_passes == 1
    slow = timed_repeats(toy, images, 0, "rise", masks=50)
    assert len(slow.repeats) == 1 and slow.forward_passes == 50


def test_errors_name_the_thing_at_fault(toy):
    images = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(EvaluationError, match="unknown method 'gradcan'; did you mean gradcam"):
        explain_with(toy, images, 0, "gradcan")
    with pytest.raises(EvaluationError, match="method 'gradcam' has no option 'masks' \\(its options: layer, batch_size\\)"):
        explain_with(toy, images, 0, "gradcam", masks=10)
    with pytest.raises(EvaluationError, match="method 'tame' needs an Explainer"):
        explain_with(toy, images, 0, "tame")
    with pytest.raises(EvaluationError, match="class indices must be in 0..1"):
        explain_with(toy, images, 5, "gradcam")
    with pytest.raises(LayerError, match="unknown layer 'featurez'"):
        explain_with(toy, images, 0, "gradcam", layer="featurez")


def test_every_method_on_a_cnn(explainer):
    """EfficientNet-Lite0 (real weights) with an untrained head, on small inputs. Score-CAM and
    Ablation-CAM read the 24-channel ``blocks.1`` here to stay quick (a forward per channel)."""
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected_forwards = {"rise": 32, "scorecam": 1 + 24, "ablationcam": 2 + 24}
    for method in list_methods():
        options = {"rise": {"masks": 32}, "scorecam": {"layer": "blocks.1"}, "ablationcam": {"layer": "blocks.1"}}
        result = explain_with(explainer, images, [281, 409], method, **options.get(method, {}))
        assert result.maps.shape == (2, 64, 64), method
        assert float(result.maps.min()) >= 0.0 and float(result.maps.max()) <= 1.0, method
        assert bool(torch.isfinite(result.maps).all()), method
        assert result.forward_passes == expected_forwards.get(method, 1), method
        gradients = method in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
        assert result.backward_passes == (1 if gradients else 0), method
        stated = get_method(method).expected_passes(explainer, **options.get(method, {}))
        assert stated == (result.forward_passes, result.backward_passes), method  # estimates match what is counted
    assert default_target_layer(explainer.backbone) == "blocks.6"
    assert default_target_layer(explainer.backbone, ["blocks.2", "blocks.4", "bn2"]) == "bn2"  # a head's deepest tap


@pytest.fixture(scope="module")
def vit_tiny() -> Backbone:
    return load_backbone("timm:vit_tiny_patch16_224", weights="random")


def test_cams_on_a_vit_use_the_token_adapter(vit_tiny):
    """Random-init timm ViT-Tiny: the last block's norm1 (197 tokens -> 14 x 14 map), maps of input size."""
    assert default_target_layer(vit_tiny) == "blocks.11.norm1"
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for method in ("gradcam", "hirescam", "eigencam"):
        result = explain_with(vit_tiny, images, [3, 7], method)
        assert result.maps.shape == (2, 224, 224), method
        assert 0.0 <= float(result.maps.min()) and float(result.maps.max()) <= 1.0, method
        assert float(result.maps.std()) > 0, method  # a real 14 x 14 map, not a constant


@pytest.mark.slow
def test_ablation_cam_on_a_vit_ablates_token_channels(vit_tiny):
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = explain_with(vit_tiny, images, 3, "ablationcam", batch_size=64)
    assert result.maps.shape == (1, 224, 224) and result.forward_passes == 2 + 192
    assert float(result.maps.std()) > 0


def test_score_and_ablation_cam_are_cam_subclasses():
    assert type(get_method("scorecam")) is ScoreCamMethod and type(get_method("ablationcam")) is AblationCamMethod
    assert isinstance(get_method("scorecam"), CamMethod) and isinstance(get_method("ablationcam"), CamMethod)
    assert get_method("scorecam").images_per_call == 1 and get_method("gradcam").images_per_call is None
    assert get_method("eigencam").expected_passes(None) == (1, 0) and get_method("hirescam").expected_passes(None) == (1, 1)


def test_silent_tqdm_puts_the_original_back_even_on_an_error():
    original = object()
    module = SimpleNamespace(tqdm=original)
    with pytest.raises(RuntimeError, match="inside"):
        with silent_tqdm(module):
            assert module.tqdm is not original and module.tqdm.tqdm([1, 2], desc="bar") == [1, 2]  # no bar drawn
            raise RuntimeError("inside")
    assert module.tqdm is original


def test_an_interrupted_ablation_cam_restores_tqdm_and_the_model(toy):
    """A KeyboardInterrupt in Ablation-CAM's ablated forwards leaves pytorch-grad-cam's tqdm and the
    backbone's layer as they were, and the model still explains."""
    from pytorch_grad_cam import ablation_cam

    original = ablation_cam.tqdm
    calls = []

    def interrupt(module, args, output):
        calls.append(args[0].shape[0])
        if len(calls) == 3:  # the activations, the clean scores, then the first ablated batch
            raise KeyboardInterrupt

    handle = toy.net.register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            explain_with(toy, torch.rand(1, 3, SIZE, SIZE), 0, "ablationcam", layer="features")
    finally:
        handle.remove()
    assert len(calls) == 3 and ablation_cam.tqdm is original
    assert "AblationLayer" not in [type(m).__name__ for m in toy.modules()]
    assert explain_with(toy, torch.rand(1, 3, SIZE, SIZE), 0, "ablationcam", layer="features").forward_passes == 3
