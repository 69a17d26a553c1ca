"""Layer taps: hooks that always come off, layer listing, and the ViT token adapter."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from tame_core import load_backbone
from tame_core.backbones.base import Backbone
from tame_core.errors import LayerError
from tame_core.preprocessing import Preprocess
from tame_core.taps import LayerTaps, TokenLayout, check_layers, infer_token_layout, list_layers, tokens_to_map


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_taps_capture_maps_and_always_remove_hooks(lite0):
    before = _hook_count(lite0.net)
    with LayerTaps(lite0, ["blocks.2", "blocks.6"]) as taps:
        assert _hook_count(lite0.net) == before + 3  # two layers + the input-size pre-hook
        lite0(torch.rand(2, 3, 224, 224))
    assert _hook_count(lite0.net) == before
    assert [tuple(f.shape) for f in taps.features] == [(2, 40, 28, 28), (2, 320, 7, 7)]

    with pytest.raises(RuntimeError, match="boom"):
        with LayerTaps(lite0, ["blocks.2"]):
            raise RuntimeError("boom")
    assert _hook_count(lite0.net) == before


def test_taps_equal_the_modules_outputs(lite0):
    x = torch.rand(1, 3, 224, 224)
    with LayerTaps(lite0, ["blocks.4"]) as taps:
        lite0(x)
    direct = lite0.net.blocks[:5](lite0.net.bn1(lite0.net.conv_stem(lite0.normalize(x))))
    torch.testing.assert_close(taps.features[0], direct)


def test_unknown_and_unusable_layers_say_why(lite0):
    with pytest.raises(LayerError, match=r"unknown layer 'blocks\.22' in [a-z_0-9]+; did you mean blocks\.2"):
        LayerTaps(lite0, ["blocks.22"])
    with pytest.raises(LayerError, match=r"layer 'classifier' cannot be tapped: its output has shape \(B, 1000\): no spatial layout"):
        check_layers(lite0, ["classifier"])
    with pytest.raises(LayerError, match="repeated"):
        LayerTaps(lite0, ["blocks.2", "blocks.2"])


def test_list_layers_reports_shapes_and_reasons():
    resnet = load_backbone("resnet50", weights="random")
    infos = {info.name: info for info in list_layers(resnet)}
    assert infos["layer3"].usable and infos["layer3"].channels == 1024 and infos["layer3"].map_size == (14, 14)
    assert infos["layer1.0.relu"].reason == "runs 3 times per forward pass"
    assert "no spatial layout" in infos["fc"].reason and infos["fc"].output_shape == (1000,)
    assert infos["avgpool"].usable and infos["avgpool"].map_size == (1, 1)


def test_token_layout_known_answer():
    # token (r, c) of a 2x3 grid carries the value 10*r + c in every channel, after 2 prefix tokens
    grid = torch.tensor([[10.0 * r + c for c in range(3)] for r in range(2)])
    tokens = torch.cat([torch.full((2,), -1.0), grid.flatten()])[None, :, None].expand(1, 8, 4)
    feature = tokens_to_map(tokens, TokenLayout(prefix_tokens=2, grid=(2, 3)))
    assert feature.shape == (1, 4, 2, 3)
    assert torch.equal(feature[0, 1], grid)


@pytest.mark.parametrize(
    "name, kwargs, input_hw, prefix, grid",
    [
        ("vit_tiny_patch16_224", {}, (224, 224), 1, (14, 14)),
        ("deit_tiny_distilled_patch16_224", {}, (224, 224), 2, (14, 14)),  # class + distillation token
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, (224, 224), 5, (14, 14)),  # class + 4 register tokens
        ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (160, 320), 1, (10, 20)),  # non-square
        ("vit_tiny_patch16_224", {"patch_size": 32, "img_size": 256}, (256, 256), 1, (8, 8)),
    ],
)
def test_token_layout_is_read_from_timm_models(name, kwargs, input_hw, prefix, grid):
    net = timm.create_model(name, pretrained=False, **kwargs).eval()
    backbone = Backbone("test", net, Preprocess(input_size=input_hw), [str(i) for i in range(1000)], ["blocks.11"])
    with torch.no_grad(), LayerTaps(backbone, ["blocks.11"]) as taps:
        backbone(torch.rand(1, 3, *input_hw))
    tokens = grid[0] * grid[1] + prefix
    assert infer_token_layout(net, input_hw, tokens) == TokenLayout(prefix, grid)
    assert tuple(taps.features[0].shape) == (1, net.embed_dim, *grid)


def test_torchvision_vit_layout():
    vit = load_backbone("vit_b_16", weights="random")
    with torch.no_grad(), LayerTaps(vit, ["encoder.layers.encoder_layer_11.ln_1"]) as taps:
        vit(torch.rand(1, 3, 224, 224))
    assert infer_token_layout(vit.net, (224, 224), 197) == TokenLayout(1, (14, 14))
    assert tuple(taps.features[0].shape) == (1, 768, 14, 14)


def test_token_layout_without_a_patch_size_uses_the_aspect_ratio():
    plain = nn.Identity()
    assert infer_token_layout(plain, (224, 224), 197) == TokenLayout(1, (14, 14))
    assert infer_token_layout(plain, (128, 256), 8 * 16 + 2) == TokenLayout(2, (8, 16))
    with pytest.raises(LayerError, match="cannot arrange 5 tokens into a patch grid for a 100x270 input"):
        infer_token_layout(plain, (100, 270), 5)
