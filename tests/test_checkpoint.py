"""Checkpoints: safetensors + JSON card round trips, integrity, and heads that do not fit."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tame_core import Explainer, TAMEHead, load_backbone, load_head, save_head
from tame_core.card import metadata_for
from tame_core.checkpoint import paths_for, read_metadata
from tame_core.fingerprint import sha256_of
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
    assert tensors.is_file() and card.is_file() and not [p for p in tensors.parent.iterdir() if p.suffix == ".tmp"]
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


# --- names with a dot (issue 14.1) -------------------------------------------------------------------
@pytest.mark.parametrize("given", ["dots/head.v2", "dots/head.v2.safetensors", "dots/head.v2.json"])
def test_names_with_a_dot_keep_every_part(tmp_path, given):
    tensors, card = paths_for(tmp_path / given)
    assert (tensors.name, card.name) == ("head.v2.safetensors", "head.v2.json")
    assert paths_for(tmp_path / "x.safetensors") == (tmp_path / "x.safetensors", tmp_path / "x.json")


def test_saving_head_v2_leaves_head_alone(saved, lite0):
    head, path = saved
    other = path.with_name("my_head.v2.safetensors")
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    torch.manual_seed(5)
    second = TAMEHead([40, 112, 320], 1000)
    save_head(second, metadata_for(second, lite0, lite0.default_layers), other)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name in before} == before
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([*before, "my_head.v2.json", "my_head.v2.safetensors"])
    loaded, _ = load_head(other.with_suffix(""))  # "my_head.v2": both files found by the full name
    assert torch.equal(loaded.fuser.weight, second.fuser.weight)


def test_the_app_training_name_with_a_dot_does_not_replace_the_bundled_head(tmp_path):
    from tame_core.studio.training import output_path
    from tame_core.training import TrainConfig

    out = output_path("efficientnet_lite0.v2", tmp_path)
    config = TrainConfig(data=tmp_path, out=out)
    assert paths_for(config.out) == (tmp_path / "efficientnet_lite0.v2.safetensors", tmp_path / "efficientnet_lite0.v2.json")
    assert config.state_path.name == "efficientnet_lite0.v2.state.pt" and config.log_path.name == "efficientnet_lite0.v2.log.jsonl"


# --- hostile cards (issue 14.3) ------------------------------------------------------------------------
@pytest.fixture
def no_real_build(monkeypatch):
    """Fails a test that builds a head anywhere but on the meta device (i.e. allocates before checking)."""
    from tame_core import checkpoint

    built = []

    def spy(*args, **kwargs):
        built.append(torch.get_default_device().type)
        if built[-1] != "meta":
            raise AssertionError("a head was built before the card was checked")
        return TAMEHead(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "TAMEHead", spy)
    return built


def _edit_card(path, **changes):
    card_path = paths_for(path)[1]
    card = json.loads(card_path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            card.pop(key)
        else:
            card[key] = value
    card_path.write_text(json.dumps(card))


_DROP = object()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_classes": "1000"}, "num_classes must be a whole number from 1 to 1000000, got '1000'"),
        ({"num_classes": -5}, "num_classes must be a whole number from 1 to 1000000, got -5"),
        ({"num_classes": [1000]}, "num_classes must be a whole number from 1 to 1000000, got [1000]"),
        ({"num_classes": 1e9}, "num_classes must be a whole number from 1 to 1000000, got 1000000000.0"),
        ({"num_classes": 10**9}, "num_classes must be a whole number from 1 to 1000000, got 1000000000"),
        ({"num_classes": True}, "num_classes must be a whole number from 1 to 1000000, got True"),
        ({"channels": [40, 112, 10**8]}, "channels must be a list of whole numbers from 1 to 65536, one per layer, got [40, 112, 100000000]"),
        ({"channels": [40, "112", 320]}, "channels must be a list of whole numbers from 1 to 65536, one per layer, got [40, '112', 320]"),
        ({"channels": [40, 0, 320]}, "channels must be a list of whole numbers from 1 to 65536, one per layer, got [40, 0, 320]"),
        ({"channels": 472}, "channels must be a list of whole numbers from 1 to 65536, one per layer, got 472"),
        ({"layers": "blocks.2"}, "layers must be a list of 1 to 64 layer names, got 'blocks.2'"),
        ({"layers": []}, "layers must be a list of 1 to 64 layer names, got []"),
        ({"backbone": 7}, "backbone must be a non-empty string, got 7"),
        ({"variant": "evil"}, "variant must be one of tame, no_skip, no_bn, sigmoid, got 'evil'"),
        ({"max_resolution": -1}, "max_resolution must be a whole number from 1 to 4096, got -1"),
        ({"input_size": [224]}, "input_size must be [height, width], whole numbers from 1 to 8192, got [224]"),
        ({"training": "fast"}, "training must be a JSON object, got 'fast'"),
        ({"weights_sha256": "abc"}, "weights_sha256 must be 64 lowercase hex digits, got 'abc'"),
        ({"format_version": "x"}, "format_version must be a whole number, got 'x'"),
        ({"format_version": 99}, "has format version 99; upgrade tame_core to read it"),
        ({"channels": [40, 112]}, "3 layers but 2 channel counts; they go one per layer"),
        ({"map_blur": -0.1}, "map_blur must be a number from 0 to 0.25 (a fraction of the input's shorter side), got -0.1"),
        ({"map_blur": 3}, "map_blur must be a number from 0 to 0.25 (a fraction of the input's shorter side), got 3"),
        ({"map_blur": True}, "map_blur must be a number from 0 to 0.25 (a fraction of the input's shorter side), got True"),
        ({"map_blur": "0.1"}, "map_blur must be a number from 0 to 0.25 (a fraction of the input's shorter side), got '0.1'"),
        ({"map_blur": float("inf")}, "map_blur must be a number from 0 to 0.25 (a fraction of the input's shorter side), got inf"),
    ],
)
def test_hostile_card_fields_are_refused_before_anything_is_built(saved, no_real_build, changes, message):
    _, path = saved
    _edit_card(path, **changes)
    card = paths_for(path)[1]
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    assert str(info.value) in (f"{card}: {message}", f"{card} {message}")
    assert no_real_build == []


def test_a_card_that_is_not_an_object(saved):
    _, path = saved
    paths_for(path)[1].write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"my_head.json is not a TAME head card \(a JSON list, not an object\)$"):
        load_head(path)


@pytest.mark.parametrize(
    "changes, detail",
    [
        ({"num_classes": 200_000}, "fuser.weight is (1000, 472, 1, 1), card needs (200000, 472, 1, 1); fuser.bias is (1000,), card needs (200000,)"),
        ({"channels": [40, 112, 60_000]}, "branches.2.conv.weight is (320, 320, 1, 1), card needs (60000, 60000, 1, 1); "),
    ],
)
def test_card_sizes_in_range_are_checked_against_the_tensors_first(saved, no_real_build, changes, detail):
    """A card the right type but not the file's tensors: refused from the header, the head never built."""
    head, path = saved
    _write_raw(path, dict(head.state_dict()), None)  # no embedded metadata: the card alone describes the file
    _edit_card(path, weights_sha256=sha256_of(path), tensors_sha256=_DROP, **changes)
    with pytest.raises(CheckpointError, match=r"tensors do not match the head its card describes \(") as info:
        load_head(path)
    assert detail in str(info.value)
    assert no_real_build == ["meta"]


def test_a_card_that_belongs_to_another_head_is_refused(saved):
    """Same tensor shapes, other structure (sigmoid vs no_skip activations): the file's own metadata disagrees."""
    _, path = saved
    _edit_card(path, variant="sigmoid")
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    assert str(info.value) == (
        "my_head.json and the metadata inside my_head.safetensors disagree on variant (card: 'sigmoid', file: 'no_skip'): "
        "the card belongs to another head"
    )


def _write_raw(path, state, metadata: dict | None):
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"tame_head_metadata": json.dumps(metadata)} if metadata is not None else None)


def test_lone_file_whose_tensors_disagree_with_its_metadata(tmp_path, lite0, no_real_build):
    from tame_core.fingerprint import state_safetensors_sha256

    head = TAMEHead([40, 112, 320], 10)
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    meta = json.loads(metadata_for(TAMEHead([40, 112, 320], 1000), lite0, lite0.default_layers).to_json())
    meta["tensors_sha256"] = state_safetensors_sha256(state)
    path = tmp_path / "lone.safetensors"
    _write_raw(path, state, meta)
    with pytest.raises(CheckpointError, match=r"fuser.weight is \(10, 472, 1, 1\), card needs \(1000, 472, 1, 1\)"):
        load_head(path)
    state["extra"] = torch.zeros(3)
    state["fuser.weight"] = torch.zeros(1000, 472, 1, 1, dtype=torch.int32)
    state["fuser.bias"] = torch.zeros(1000)
    _write_raw(path, state, meta)
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    assert str(info.value) == f"{path}: tensors do not match the head its card describes (unexpected 'extra'; fuser.weight is I32, card needs F32)"


def test_a_header_that_points_outside_the_file(saved):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 4])  # the last tensor's bytes run past the end
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_head(path)


def test_hostile_cards_are_one_line_errors_in_the_app(saved):
    from tame_core.studio.models import ModelChoice, load_model

    _, path = saved
    _edit_card(path, num_classes="1000")
    with pytest.raises(CheckpointError, match="num_classes must be a whole number"):
        load_model(ModelChoice(head=str(path)))


# --- integrity is never optional (issue 14.4) ---------------------------------------------------------
def _flip(path, count=64):
    raw = bytearray(path.read_bytes())
    raw[-200 : -200 + count] = bytes(b ^ 0xFF for b in raw[-200 : -200 + count])
    path.write_bytes(bytes(raw))


def test_every_saved_head_records_both_digests(saved):
    from safetensors import safe_open

    _, path = saved
    card = json.loads(paths_for(path)[1].read_text())
    with safe_open(str(path), "pt") as handle:
        embedded = json.loads(handle.metadata()["tame_head_metadata"])
    assert len(card["weights_sha256"]) == 64 and card["tensors_sha256"] == embedded["tensors_sha256"]
    assert len(embedded["tensors_sha256"]) == 64 and embedded["weights_sha256"] is None


def test_a_card_without_its_digest_still_catches_tampered_tensors(saved):
    _, path = saved
    _edit_card(path, weights_sha256=_DROP, tensors_sha256=_DROP)
    load_head(path)  # untouched tensors load
    _flip(path)
    with pytest.raises(CheckpointError, match="its tensors do not match the SHA-256 recorded inside it"):
        load_head(path)


def test_a_lone_tampered_file_is_refused(saved):
    _, path = saved
    paths_for(path)[1].unlink()
    _flip(path)
    with pytest.raises(CheckpointError, match="its tensors do not match the SHA-256 recorded inside it"):
        load_head(path)


def test_heads_without_any_digest_are_refused(tmp_path, saved, lite0):
    head, _ = saved
    meta = json.loads(metadata_for(head, lite0, lite0.default_layers).to_json())  # an older file: no tensors_sha256
    path = tmp_path / "old.safetensors"
    _write_raw(path, dict(head.state_dict()), meta)
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    assert str(info.value) == (
        f"{path}: no old.json beside it and no SHA-256 in its header, so its integrity cannot be checked; "
        "re-save it with tame_core.save_head"
    )
    paths_for(path)[1].write_text(json.dumps(meta))  # a card without weights_sha256 beside it
    with pytest.raises(CheckpointError, match="neither old.json nor its header records a SHA-256, so its integrity cannot be checked"):
        load_head(path)
    meta["weights_sha256"] = sha256_of(path)  # the card's whole-file digest suffices
    paths_for(path)[1].write_text(json.dumps(meta))
    loaded, _ = load_head(path)
    assert torch.equal(loaded.fuser.weight, head.fuser.weight)


def test_the_bundled_head_loads():
    from tame_core.heads import bundled_head_path

    head, metadata = load_head(bundled_head_path("efficientnet_lite0"))
    assert metadata.layers == ["blocks.4", "blocks.6", "bn2"] and head.num_classes == 1000


def test_the_bundled_card_records_the_recipe_its_script_trains():
    """The script that reproduces the bundled head and the head's card must name the same recipe."""
    import importlib.util
    from pathlib import Path

    from tame_core.heads import bundled_head_path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_bundled_head.py"
    spec = importlib.util.spec_from_file_location("train_bundled_head", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe = read_metadata(bundled_head_path("efficientnet_lite0")).training["recipe"]
    shipped = dict(module.SHIPPED)
    loss = shipped.pop("loss", {})  # the weights the script sets; the card records every weight
    assert read_metadata(bundled_head_path("efficientnet_lite0")).map_blur == shipped.pop("map_blur") > 0  # the card's own field
    assert {key: recipe[key] for key in shipped} == shipped
    assert {key: recipe["loss"].get(key) for key in loss} == loss
    assert recipe["augment"] == "heavy" and recipe["layers"] == ["blocks.4", "blocks.6", "bn2"]


def test_saving_where_nothing_can_be_written_is_one_line(tmp_path, lite0):
    from tame_core.errors import OutputError

    (tmp_path / "file").write_text("x")
    head = TAMEHead([40, 112, 320], 1000)
    with pytest.raises(OutputError, match=r"file/h.safetensors: cannot write \(File exists\); nothing was written$"):
        save_head(head, metadata_for(head, lite0, lite0.default_layers), tmp_path / "file" / "h")
