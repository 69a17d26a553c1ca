"""Backbones through their real loading paths, offline: bundled lite0, torchvision's cache, timm via a local Hub."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

from tame_core import load_backbone
from tame_core.backbones import get_backbone, list_backbones
from tame_core.backbones.efficientnet_lite import bundled_weights_path, rename_efficientnet_pytorch_keys
from tame_core.errors import BackboneError
from tame_core.taps import check_layers


def test_lite0_bundled_weights_load_strictly_and_classify(lite0, sample_images):
    source = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
    renamed = rename_efficientnet_pytorch_keys(source)
    assert len(renamed) == len(source) == len(lite0.net.state_dict())
    assert renamed["blocks.2.1.conv_pwl.weight"] is source["_blocks.4._project_conv.weight"]
    assert renamed["classifier.weight"] is source["_fc.weight"]
    assert lite0.preprocess.mean == (0.5, 0.5, 0.5) and lite0.preprocess.interpolation == "bicubic"

    images = [sample_images["chelsea"], sample_images["coffee"]]
    inputs = lite0.preprocess.batch([torch.from_numpy(i).permute(2, 0, 1) for i in images], "crop")
    top1 = lite0(inputs).argmax(1).tolist()
    assert 281 <= top1[0] <= 285  # a domestic cat class (tabby, tiger cat, Persian, Siamese, Egyptian cat)
    assert lite0.class_names[top1[1]] in ("espresso", "cup", "coffee mug")


def test_backbone_is_frozen_and_stays_in_eval_mode(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    try:
        assert all(not m.training for m in lite0.net.modules())
    finally:
        lite0.eval()


def test_backbone_takes_raw_images_and_normalises_inside(lite0):
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(lite0(x), lite0.net((x - 0.5) / 0.5))


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(BackboneError, match=r"unknown backbone 'resnet5'; did you mean resnet50"):
        load_backbone("resnet5")
    with pytest.raises(BackboneError, match=r"unknown backbone 'resnet5'; did you mean resnet50"):
        get_backbone("resnet5")


def test_backbones_are_listed_sorted_and_described():
    names = list_backbones()
    assert names == sorted(names) and {"efficientnet_lite0", "resnet50", "vgg16", "vit_b_16"} <= set(names)
    assert get_backbone("resnet50").name == "resnet50" and get_backbone("resnet50").description


def test_lite0_from_a_local_file_and_a_wrong_file(tmp_path, lite0):
    good = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.net.state_dict().items()}, str(good))
    reloaded = load_backbone("efficientnet_lite0", weights=good)
    torch.testing.assert_close(reloaded.net.conv_stem.weight, lite0.net.conv_stem.weight)

    wrong = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(wrong))
    with pytest.raises(BackboneError, match=r"do not fit the model: \d+ missing \(e.g. conv_stem.weight"):
        load_backbone("efficientnet_lite0", weights=wrong)

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        load_backbone("efficientnet_lite0", weights=broken)


TORCHVISION_CASES = [
    # name, checkpoint file torchvision caches, expected (channels, size) of the default layers at 224 px
    ("resnet50", "resnet50-0676ba61.pth", [(512, (28, 28)), (1024, (14, 14)), (2048, (7, 7))]),
    ("vgg16", "vgg16-397923af.pth", [(256, (28, 28)), (512, (14, 14)), (512, (7, 7))]),
    ("vit_b_16", "vit_b_16-c867db91.pth", [(768, (14, 14))] * 3),
]


@pytest.mark.parametrize("name, file_name, expected", TORCHVISION_CASES)
def test_torchvision_weights_come_from_torchvisions_own_cache(tmp_path, monkeypatch, name, file_name, expected):
    """Random weights placed where torchvision caches its download load through the real IMAGENET1K_V1 path."""
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / file_name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    backbone = load_backbone(name)
    assert backbone.source == f"torchvision {name} IMAGENET1K_V1"
    for key in list(reference)[:5] + list(reference)[-3:]:
        torch.testing.assert_close(backbone.net.state_dict()[key], reference[key], rtol=0, atol=0)
    infos = check_layers(backbone, backbone.default_layers)
    assert [(info.channels, info.map_size) for info in infos] == expected
    assert backbone.preprocess.mean == (0.485, 0.456, 0.406) and len(backbone.class_names) == 1000


def test_torchvision_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(BackboneError) as info:
        load_backbone("resnet50")
    message = str(info.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "$TORCH_HOME/hub/checkpoints/resnet50-0676ba61.pth" in message


def test_vit_accepts_t_tame_fx_layer_names():
    backbone = load_backbone("vit_b_16", weights="random")
    assert backbone.resolve_layer("encoder.layers.encoder_layer_9.ln") == "encoder.layers.encoder_layer_9.ln_1"
    info = check_layers(backbone, ["encoder.layers.encoder_layer_9.ln"])[0]
    assert info.name == "encoder.layers.encoder_layer_9.ln_1" and info.kind == "tokens" and info.map_size == (14, 14)
    assert backbone.preprocess.fixed_input_size


def test_timm_model_pretrained_through_the_hub(fake_hub):
    """timm's own download path (hf_hub_download of model.safetensors) served by the local Hub."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    fake_hub.add_file("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", "model.safetensors", save_safetensors(state))

    backbone = load_backbone("timm:vit_tiny_patch16_224")
    torch.testing.assert_close(backbone.net.head.weight, state["head.weight"], rtol=0, atol=0)
    assert backbone.default_layers == ("blocks.9", "blocks.10", "blocks.11")
    assert backbone.preprocess.fixed_input_size and backbone.preprocess.input_size == (224, 224)
    assert any("model.safetensors" in path for _, path in fake_hub.requests)
    assert load_backbone("vit_tiny_patch16_224", weights="random").name == "vit_tiny_patch16_224"  # bare timm names


def test_timm_model_missing_on_the_hub_is_a_clear_error(fake_hub):
    with pytest.raises(BackboneError, match="cannot get pretrained weights for timm model 'resnet18'"):
        load_backbone("timm:resnet18")
    with pytest.raises(BackboneError, match="timm has no model called 'no_such_net'"):
        load_backbone("timm:no_such_net")


def test_weights_only_refuses_pickled_objects(tmp_path):
    """A .pth holding arbitrary objects is rejected without running their code."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    torch.save({"conv_stem.weight": Evil()}, buffer)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(BackboneError, match="cannot read weights file"):
        load_backbone("efficientnet_lite0", weights=path)
    assert not marker.exists()


def test_timm_model_from_a_local_file(tmp_path):
    import timm

    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    backbone = load_backbone("timm:resnet18", weights=path)
    torch.testing.assert_close(backbone.net.fc.weight, state["fc.weight"], rtol=0, atol=0)
    assert backbone.source == path.name and backbone.default_layers == ("layer2", "layer3", "layer4")
