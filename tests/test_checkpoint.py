"""Checkpoints: safetensors + JSON card round trips, integrity, and heads that do not fit."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tame_core import Explainer, TAMEHead, load_backbone, load_head, save_head
from tame_core.checkpoint import metadata_for, paths_for, read_metadata, sha256_of
from tame_core.errors import CheckpointError


@pytest.fixture
def saved(tmp_path, lite0):
    torch.manual_seed(1)
    head = TAMEHead([40, 112, 320], 1000, variant="no_skip")
    head.branches[0].bn.running_mean.normal_()
    metadata = metadata_for(head, lite0, lite0.default_layers, training={"epochs": 8}, metrics={"AD100": 1.5})
    path = tmp_path / "sub" / "my_head.safetensors"
    save_head(head, metadata, path)
    return head, path


def test_round_trip(saved):
    head, path = saved
    tensors, card = paths_for(path)
    assert tensors.is_file() and card.is_file() and not list(tensors.parent.glob("*.tmp"))
    loaded, metadata = load_head(path)
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert metadata.variant == "no_skip" and metadata.training == {"epochs": 8} and metadata.metrics == {"AD100": 1.5}
    assert metadata.weights_sha256 == sha256_of(tensors)
    assert json.loads(card.read_text())["layers"] == ["blocks.2", "blocks.4", "blocks.6"]
    assert not loaded.training


def test_a_lone_safetensors_file_carries_its_metadata(saved):
    _, path = saved
    paths_for(path)[1].unlink()
    loaded, metadata = load_head(path)
    assert metadata.backbone == "efficientnet_lite0" and metadata.weights_sha256 is None
    assert loaded.variant == "no_skip"


def test_corrupted_weights_are_detected(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match the SHA-256 in its card"):
        load_head(path)


def test_not_a_safetensors_file_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="not a readable safetensors file|no TAME metadata"):
        load_head(path)
    assert not marker.exists()


def test_bad_cards(saved):
    _, path = saved
    card = paths_for(path)[1]
    card.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_metadata(path)
    card.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="is not a TAME head card"):
        read_metadata(path)
    card.write_text(json.dumps({"format": "tame-head", "format_version": 1, "backbone": "x"}))
    with pytest.raises(CheckpointError, match="lacks layers, channels, num_classes"):
        read_metadata(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no head checkpoint at"):
        load_head(tmp_path / "absent.safetensors")


def test_head_on_the_wrong_backbone_names_the_differences(random_head_path):
    resnet = load_backbone("resnet50", weights="random")
    with pytest.raises(CheckpointError) as info:
        Explainer.load(random_head_path, backbone=resnet, device="cpu")
    message = str(info.value)
    assert message == "head does not fit this backbone: different backbone (head: 'efficientnet_lite0', here: 'resnet50')"


def test_head_on_the_wrong_layers_names_them(random_head_path, lite0):
    head, metadata = load_head(random_head_path)
    with pytest.raises(CheckpointError, match=r"different layers \(head: \['blocks.2', 'blocks.4', 'blocks.6'\], here: \['blocks.1', 'blocks.4', 'blocks.6'\]\)"):
        Explainer(lite0, head, ["blocks.1", "blocks.4", "blocks.6"], metadata)


def test_metadata_must_describe_the_head(tmp_path, lite0):
    head = TAMEHead([40, 112, 320], 1000)
    metadata = metadata_for(head, lite0, lite0.default_layers)
    metadata.channels = [1, 2, 3]
    with pytest.raises(CheckpointError, match="does not describe the head"):
        save_head(head, metadata, tmp_path / "x.safetensors")
