"""Importing official T-TAME Lightning checkpoints, on synthetic files with the official key layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tame_core import Explainer, load_backbone, load_head
from tame_core.cli import main
from tame_core.errors import CheckpointError
from tame_core.official import import_official_checkpoint


def _official_head_state(prefix: str, channels: list[int], classes: int = 1000) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for i, c in enumerate(channels):
        state[f"{prefix}convs.{i}.weight"] = torch.randn(c, c, 1, 1, generator=generator) * 0.05
        state[f"{prefix}convs.{i}.bias"] = torch.randn(c, generator=generator) * 0.05
        state[f"{prefix}bns.{i}.weight"] = 1 + 0.1 * torch.randn(c, generator=generator)
        state[f"{prefix}bns.{i}.bias"] = 0.1 * torch.randn(c, generator=generator)
        state[f"{prefix}bns.{i}.running_mean"] = 0.1 * torch.randn(c, generator=generator)
        state[f"{prefix}bns.{i}.running_var"] = 1 + torch.rand(c, generator=generator)
        state[f"{prefix}bns.{i}.num_batches_tracked"] = torch.tensor(1234)
    state[f"{prefix}fuser.weight"] = torch.randn(classes, sum(channels), 1, 1, generator=generator) * 0.05
    state[f"{prefix}fuser.bias"] = torch.randn(classes, generator=generator) * 0.05
    return state


def _lightning_checkpoint(path, head_state, hyper) -> None:
    """What Lightning writes: the whole model's state_dict plus plain-data bookkeeping."""
    state = {"generic.model.conv1.weight": torch.zeros(4, 3, 1, 1), **head_state}
    torch.save(
        {
            "epoch": 7,
            "global_step": 320296,
            "pytorch-lightning_version": "2.1.0",
            "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001, "momentum": 0.9}]}],
            "lr_schedulers": [{"last_epoch": 7}],
            "hyper_parameters": hyper,
        },
        path,
    )


def _reference_maps(state: dict[str, torch.Tensor], prefix: str, features: list[torch.Tensor]) -> torch.Tensor:
    """The TAME head written out with functional ops, straight from the official tensors."""
    size = tuple(min(56, s) for s in features[0].shape[-2:])
    outputs = []
    for i, feature in enumerate(features):
        p = f"{prefix}convs.{i}."
        b = f"{prefix}bns.{i}."
        y = F.conv2d(feature, state[p + "weight"], state[p + "bias"])
        y = F.batch_norm(y, state[b + "running_mean"], state[b + "running_var"], state[b + "weight"], state[b + "bias"], False, 0.0, 1e-5)
        y = torch.relu(y + feature)
        outputs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    return F.conv2d(torch.cat(outputs, 1), state[f"{prefix}fuser.weight"], state[f"{prefix}fuser.bias"])


def test_cnn_checkpoint_imports_and_computes_the_same_maps(tmp_path):
    channels = [512, 1024, 2048]
    head_state = _official_head_state("generic.attn_mech.", channels)
    ckpt = tmp_path / "epoch=7-step=320296.ckpt"
    _lightning_checkpoint(ckpt, head_state, {"model_name": "resnet50", "layers": ["layer2", "layer3", "layer4"]})

    head, metadata = import_official_checkpoint(ckpt, tmp_path / "resnet50_ttame.safetensors")
    assert metadata.backbone == "resnet50" and metadata.layers == ["layer2", "layer3", "layer4"]
    assert metadata.channels == channels and metadata.training["repo"] == "IDT-ITI/T-TAME-models"

    features = [torch.rand(2, 512, 28, 28), torch.rand(2, 1024, 14, 14), torch.rand(2, 2048, 7, 7)]
    expected = _reference_maps(head_state, "generic.attn_mech.", features)
    reloaded, _ = load_head(tmp_path / "resnet50_ttame.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(features), expected, atol=1e-4, rtol=1e-4)
    explainer = Explainer.load(tmp_path / "resnet50_ttame.safetensors", backbone=load_backbone("resnet50", weights="random"), device="cpu")
    assert explainer.explain(torch.rand(1, 3, 224, 224)).maps.shape == (1, 1, 224, 224)


def test_vit_checkpoint_with_fx_layer_names(tmp_path):
    head_state = _official_head_state("generic.attn_mech.1.", [768, 768, 768])
    ckpt = tmp_path / "vit.ckpt"
    fx_layers = [f"encoder.layers.encoder_layer_{i}.ln" for i in (9, 10, 11)]
    _lightning_checkpoint(ckpt, head_state, {"model_name": "vit_b_16", "layers": fx_layers})

    head, metadata = import_official_checkpoint(ckpt, tmp_path / "vit.safetensors")
    assert metadata.layers == [f"encoder.layers.encoder_layer_{i}.ln_1" for i in (9, 10, 11)]
    features = [torch.rand(1, 768, 14, 14) for _ in range(3)]
    with torch.no_grad():
        torch.testing.assert_close(head(features), _reference_maps(head_state, "generic.attn_mech.1.", features), atol=1e-4, rtol=1e-4)


def test_backbone_and_layers_can_be_given_and_are_checked(tmp_path):
    ckpt = tmp_path / "bare.ckpt"
    _lightning_checkpoint(ckpt, _official_head_state("generic.attn_mech.", [256, 512, 512]), {})
    with pytest.raises(CheckpointError, match="name the backbone and layers"):
        import_official_checkpoint(ckpt, tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match=r"branch channels \[256, 512, 512\] but layers \['layer2', 'layer3', 'layer4'\] of resnet50 give \[512, 1024, 2048\]"):
        import_official_checkpoint(ckpt, tmp_path / "out.safetensors", "resnet50", ["layer2", "layer3", "layer4"])
    code = main(["import-official", str(ckpt), "--out", str(tmp_path / "vgg.safetensors"), "--backbone", "vgg16",
                 "--layers", "features.16", "features.23", "features.30"])
    assert code == 0 and load_head(tmp_path / "vgg.safetensors")[1].backbone == "vgg16"


def test_checkpoints_with_arbitrary_objects_are_refused_unexecuted(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "evil.ckpt"
    _lightning_checkpoint(ckpt, _official_head_state("generic.attn_mech.", [8]), {"callback": Evil()})
    with pytest.raises(CheckpointError, match="cannot be read as a tensors-only checkpoint"):
        import_official_checkpoint(ckpt, tmp_path / "out.safetensors", "resnet50", ["layer2"])
    assert not marker.exists()


def test_a_checkpoint_without_a_head(tmp_path):
    ckpt = tmp_path / "nohead.ckpt"
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(2, 2)}}, ckpt)
    with pytest.raises(CheckpointError, match="no T-TAME head under 'generic.attn_mech.'"):
        import_official_checkpoint(ckpt, tmp_path / "out.safetensors", "resnet50", ["layer2"])
