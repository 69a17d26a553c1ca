"""Hostile input, second pass (issue 24): numbers, JSON, tensors, files and interrupts, one guard per class.

* every JSON reader: :func:`tame_core.reading.parse_json` / :func:`~tame_core.reading.read_json`;
* every file read: :func:`tame_core.reading.read_regular`;
* every head loaded or saved: :func:`tame_core.checkpoint.check_weights`;
* every tensor explained: ``preprocessing._check_values`` (all geometries), index checks in ``Explanation``;
* every device: :func:`tame_core.devices.parse_device`; every count option: ``cli.common.int_between``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core import TAMEHead, load_head, load_image, save_head
from tame_core.card import metadata_for
from tame_core.checkpoint import paths_for, read_metadata
from tame_core.cli import main
from tame_core.errors import CheckpointError, EvaluationError, ImageLoadError, OptionError, TrainingError
from tame_core.reading import MAX_JSON_DEPTH, parse_json, read_json, read_regular
from noise_images import noise_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "timm:test_efficientnet", "--weights", "random", "--device", "cpu", "--no-progress"]


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return noise_folder(tmp_path_factory.mktemp("tiny"), 4)


# --- JSON: one reader ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, says",
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deep (the limit is 64 levels)"),
        ('{"a":' * 5_000 + "1" + "}" * 5_000, "JSON nested too deep (the limit is 64 levels)"),
        ("[" * 65 + "]" * 65, "JSON nested too deep (the limit is 64 levels)"),
        ('{"num_classes": ' + "9" * 5_000 + "}", "not valid JSON (a whole number of 5000 digits (the limit is 40))"),
        ("-" + "1" * 41, "not valid JSON (a whole number of 41 digits (the limit is 40))"),
        ('{"a": 1', "not valid JSON (Expecting ',' delimiter"),
        (b"\xff\xfe{}", "not valid JSON ("),
    ],
)
def test_the_json_reader_refuses_depth_digits_and_junk_in_one_line(text, says):
    with pytest.raises(CheckpointError) as error:
        parse_json(text, CheckpointError, "card.json")
    assert str(error.value).startswith(f"card.json: {says}") and "\n" not in str(error.value) and len(str(error.value)) < 220
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, CheckpointError, "x") is not None  # the limit itself is fine
    assert parse_json('{"big": 1e400, "n": -123}', CheckpointError, "x") == {"big": float("inf"), "n": -123}


def test_the_json_reader_has_a_size_limit(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 600_000 + "0]")
    with pytest.raises(EvaluationError, match=r"big\.json: 1 MB is over the 1 MB limit for this file$"):
        read_json(path, EvaluationError, max_bytes=2**20)
    with pytest.raises(EvaluationError, match=r"^x: 1 MB of JSON is over the 1 MB limit$"):
        parse_json("[" + "0," * 600_000 + "0]", EvaluationError, "x", max_bytes=2**20)


def _card(random_head_path: Path, tmp_path: Path, change) -> Path:
    for source, suffix in zip(paths_for(random_head_path), (".safetensors", ".json")):
        (tmp_path / f"h{suffix}").write_bytes(source.read_bytes())
    card = tmp_path / "h.json"
    card.write_text(change(card.read_text()))
    return tmp_path / "h.safetensors"


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda t: t.replace('"num_classes": 1000', '"num_classes": ' + "1" * 5000), "a whole number of 5000 digits"),
        (lambda t: t.replace('"metrics": {}', '"metrics": ' + '{"a":' * 100_000 + "1" + "}" * 100_000), "JSON nested too deep"),
        (lambda t: t.replace('"metrics": {}', '"metrics": ' + "[" * 3000 + "]" * 3000), "JSON nested too deep"),
        (lambda t: t.replace('"max_resolution": 56', '"max_resolution": 1e400'), "max_resolution must be a whole number"),
    ],
)
def test_every_card_reader_refuses_hostile_json_in_one_line(random_head_path, tmp_path, change, says):
    head = _card(random_head_path, tmp_path, change)
    for reader in (read_metadata, load_head):
        with pytest.raises(CheckpointError) as error:
            reader(head)
        assert says in str(error.value) and "\n" not in str(error.value)


def test_a_card_field_of_5000_digits_given_as_a_dict_is_one_line():
    from tame_core.card import HeadMetadata

    card = {"format": "tame-head", "backbone": "x", "layers": ["a"], "channels": [10**5000], "num_classes": 3}
    with pytest.raises(CheckpointError, match=r"^card: channels must be a list of whole numbers.*got a list holding a number too long to show$"):
        HeadMetadata.from_dict(card, "card")
    card = {**card, "channels": [1], "num_classes": 10**5000}
    with pytest.raises(CheckpointError, match=r"^card: num_classes must be a whole number from 1 to 1000000, got a whole number of about 5000 digits$"):
        HeadMetadata.from_dict(card, "card")


def test_an_embedded_header_nested_100000_deep_is_one_line(tmp_path, lite0):
    from safetensors.torch import save_file

    head = TAMEHead([40, 112, 320], 1000)
    path = tmp_path / "deep.safetensors"
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={"tame_head_metadata": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match=r"deep\.safetensors: the metadata in its header: JSON nested too deep"):
        load_head(path)


# --- evaluation state edited by hand ------------------------------------------------------------------
def _state(tmp_path: Path, tally_change) -> Path:
    from tame_core.evaluation.state import Tally

    settings = {"images": 4, "backbone": "x"}
    row = {"image": "a.png", "method": "tame", "ms_per_image": 3.5, "forward_passes": 1.0, "backward_passes": 0.0,
           "values": {"adic": {"AD100": 0.5, "IC100": 0.0}}}
    tally = Tally({"rows": [row], "done": ["a.png", "b.png"], "skipped": ["b.png: not an image"]})
    data = {"settings": settings, "tally": tally.to_dict()}
    tally_change(data["tally"])
    path = tmp_path / "evaluation_state.json"
    path.write_text(json.dumps(data))
    return path, settings


def _row_change(**change):
    return lambda t: t["rows"][0].update(change)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda t: t.update(images_done="2"), 'images_done must be a whole number from 0 to 4, got "2"'),
        (lambda t: t.update(images_done=[2]), "images_done must be a whole number from 0 to 4, got [2]"),
        (lambda t: t.update(images_done=-3), "images_done must be a whole number from 0 to 4, got -3"),
        (lambda t: t.update(images_done=9), "images_done must be a whole number from 0 to 4, got 9"),
        (lambda t: t.update(images_done=True), "images_done must be a whole number from 0 to 4, got true"),
        (lambda t: t.update(done=["a", "b", "c", "d", "e"]), "done must be a list of at most 4 image names"),
        (lambda t: t.update(done="a.png"), "done must be a list of at most 4 image names"),
        (_row_change(ms_per_image=-2), "rows must be objects with an image, a method, costs of 0 or more"),
        (_row_change(forward_passes="2"), "rows must be objects"),
        (_row_change(values={"adic": {"AD100": ["x"]}}), "rows must be objects"),
        (_row_change(image=7), "rows must be objects"),
        (lambda t: t.update(rows={"a": 1}), "rows must be objects"),
        (lambda t: t.update(skipped="all"), "skipped must be a list of texts"),
    ],
)
def test_a_hand_edited_evaluation_state_is_refused_in_one_line(tmp_path, change, says):
    from tame_core.evaluation.state import load_state

    path, settings = _state(tmp_path, change)
    with pytest.raises(EvaluationError) as error:
        load_state(path, settings)
    assert str(error.value) == f"evaluation state {path} was changed by hand or is damaged ({says}); delete it to start afresh" or (
        says in str(error.value) and str(error.value).endswith("delete it to start afresh")
    )


def test_an_evaluation_state_that_is_deep_or_a_fifo_is_one_line(tmp_path):
    from tame_core.evaluation.state import load_state

    path = tmp_path / "evaluation_state.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(EvaluationError, match=r"JSON nested too deep"):
        load_state(path, {})
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(EvaluationError, match=r"evaluation_state\.json: is a FIFO, not a regular file$"):
        load_state(path, {})


def test_a_training_state_with_a_negative_step_is_one_line(tmp_path):
    from tame_core.training.state import load_state, save_state

    base = {"key": {}, "seconds": 1.0, "images": 2, "head": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {},
            "targets_rng": torch.zeros(3)}
    for field, value, shown in (("step", -5, "-5"), ("images", -1, "-1"), ("seconds", float("nan"), "nan"), ("seconds", float("inf"), "inf")):
        state = {**base, "step": 3, field: value}
        save_state(tmp_path / "s.pt", state)
        with pytest.raises(TrainingError, match=rf"s\.pt: {field} must be a number from 0 to 1e\+15, got {shown}$"):
            load_state(tmp_path / "s.pt")
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(TrainingError, match=r"fifo\.pt: is a FIFO, not a regular file$"):
        load_state(tmp_path / "fifo.pt")


# --- numbers on the command line ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "command, option, value, says",
    [
        ("train", "--seed", "-1", "must be 0 or more, got -1"),
        ("train", "--seed", str(2**70), f"must be at most 4,294,967,295, got {2**70}"),
        ("train", "--seed", "9" * 5000, "a number of 5000 digits is not a whole number this option can take"),
        ("train", "--top-k", "5000", "must be at most 1,000, got 5000"),
        ("train", "--classes-per-image", "5000", "must be at most 1,000, got 5000"),
        ("train", "--epochs", "100000000", "must be at most 100,000, got 100000000"),
        ("train", "--batch-size", "1000000", "must be at most 4,096, got 1000000"),
        ("train", "--workers", "100000", "must be at most 256, got 100000"),
        ("evaluate", "--steps", "100000000", "must be at most 1,000, got 100000000"),
        ("evaluate", "--seed", "-1", "must be 0 or more, got -1"),
        ("evaluate", "--metric-batch-size", "99999999", "must be at most 4,096, got 99999999"),
        ("explain", "--top", "5000", "must be at most 1,000, got 5000"),
        ("explain", "--batch-size", "1e9", "'1e9' is not a whole number"),
    ],
)
def test_numeric_options_are_range_checked_where_they_are_parsed(tmp_path, capsys, command, option, value, says):
    arguments = {
        "train": ["train", "--data", str(tmp_path), "--out", str(tmp_path / "h")],
        "evaluate": ["evaluate", "--data", str(tmp_path), "--out", str(tmp_path)],
        "explain": ["explain", str(tmp_path / "a.png"), "--out", str(tmp_path)],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*arguments, option, value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: argument {option}: {says}")
    assert list(tmp_path.iterdir()) == []  # nothing left behind to block the rerun


def test_top_k_above_the_backbones_classes_is_one_line(tmp_path, tiny_data, capsys, monkeypatch):
    from tame_core.backbones import load_backbone

    backbone = load_backbone("timm:test_efficientnet", "random")
    classes = backbone.num_classes
    if classes >= 1000:  # --top-k stops at 1000 on the command line: pretend the tiny backbone has 10 classes
        monkeypatch.setattr(type(backbone), "num_classes", property(lambda self: 10))
        classes = 10
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "h"), *TINY, "--top-k", str(classes + 1)])
    assert code == 2 and _errors(capsys.readouterr().err) == [
        f"error: --top-k {classes + 1}: test_efficientnet has only {classes} classes"
    ]


@pytest.mark.parametrize(
    "device, says",
    [
        ("banana", "device 'banana' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:banana", "device 'cuda:banana' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("cpu:0:1", "device 'cpu:0:1' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("", "device '' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("meta", "device 'meta' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:99", None),
    ],
)
def test_devices_are_checked_before_use(device, says):
    from tame_core.devices import parse_device

    if says is None:
        count = torch.cuda.device_count()
        says = ("this machine has no CUDA GPU" if count == 0 else f"this machine has {count} CUDA GPU(s)")
    with pytest.raises(OptionError) as error:
        parse_device(device)
    assert says in str(error.value)
    assert parse_device("cpu") == torch.device("cpu") and parse_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["train", "explain", "evaluate"])
def test_cuda_without_a_gpu_is_one_line_in_every_command(tmp_path, tiny_data, capsys, command):
    out = tmp_path / "out"
    arguments = {
        "train": ["train", "--data", str(tiny_data), "--out", str(out / "h"), "--backbone", "timm:test_efficientnet", "--weights", "random"],
        "explain": ["explain", str(tiny_data / "img0.png"), "--out", str(out)],
        "evaluate": ["evaluate", "--data", str(tiny_data), "--out", str(out), "--methods", "tame"],
    }[command]
    for device in ("cuda", "banana"):
        assert main([*arguments, "--device", device, "--no-progress"]) == 2
        lines = _errors(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith(f"error: device {device!r}")
    assert not (out / "h.log.jsonl").exists()


# --- NaN heads -----------------------------------------------------------------------------------------
def _saved_with(tmp_path: Path, lite0, name: str, tensor: str, value) -> Path:
    """A head whose ``tensor`` holds ``value``, with valid digests (what a hostile uploader can make)."""
    from safetensors.torch import save_file

    from tame_core.checkpoint import _HEADER_KEY
    from tame_core.fingerprint import state_safetensors_sha256

    torch.manual_seed(1)
    head = TAMEHead([40, 112, 320], 1000).eval()
    metadata = metadata_for(head, lite0, lite0.default_layers)
    state = {k: v.detach().clone().contiguous() for k, v in head.state_dict().items()}
    state[tensor].view(-1)[:3] = value
    metadata.tensors_sha256 = state_safetensors_sha256(state)
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path), metadata={_HEADER_KEY: metadata.to_json()})
    return path


def test_heads_with_non_finite_weights_or_negative_variances_are_refused_at_load(tmp_path, lite0, capsys):
    bn = next(name for name in TAMEHead([40, 112, 320], 1000).state_dict() if name.endswith("running_var"))
    weight = next(name for name, t in TAMEHead([40, 112, 320], 1000).state_dict().items() if t.is_floating_point() and "fuser" in name)
    cases = [("nan", weight, float("nan"), "NaN or infinite"), ("inf", weight, float("inf"), "NaN or infinite"),
             ("ninf", bn, float("-inf"), "NaN or infinite"), ("negvar", bn, -1.0, "negative variances")]
    for name, tensor, value, says in cases:
        path = _saved_with(tmp_path, lite0, name, tensor, value)
        with pytest.raises(CheckpointError) as error:
            load_head(path)
        assert str(error.value).startswith(f"{path}: {tensor} holds") and says in str(error.value)
        image = tmp_path / "a.png"
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
        assert main(["explain", str(image), "--head", str(path), "--device", "cpu", "--out", str(tmp_path / name), "--no-progress"]) == 2
        assert len(_errors(capsys.readouterr().err)) == 1 and not (tmp_path / name / "a.npy").exists()


def test_a_non_finite_head_is_never_saved(tmp_path, lite0):
    head = TAMEHead([40, 112, 320], 1000)
    with torch.no_grad():
        next(head.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"^h\.safetensors \(not saved\): .* holds 1 NaN or infinite value\(s\); the head is unusable$"):
        save_head(head, metadata_for(head, lite0, lite0.default_layers), tmp_path / "h")
    assert list(tmp_path.iterdir()) == []


def test_training_stops_in_one_line_on_a_nan_loss_and_saves_no_head(tmp_path, tiny_data, capsys):
    out = tmp_path / "h"
    code = main(["train", "--data", str(tiny_data), "--out", str(out), *TINY, "--epochs", "3", "--batch-size", "2", "--lr", "1e30"])
    errors = _errors(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1
    assert "the loss is nan" in errors[0] or "the loss is inf" in errors[0]
    assert "try a lower --lr than 1e+30" in errors[0]
    assert not out.with_suffix(".safetensors").exists() and not out.with_suffix(".json").exists()
    if out.with_suffix(".state.pt").exists():  # a state saved before the loss went bad is a good one
        from tame_core.training.state import load_state

        state = load_state(out.with_suffix(".state.pt"))
        assert all(bool(torch.isfinite(t).all()) for t in state["head"].values() if t.is_floating_point())


# --- tensors given to the explainer -------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["input", "full", "crop"])
def test_explainer_inputs_are_finite_and_real_in_every_geometry(explainer, geometry):
    good = torch.rand(1, 3, 224, 224)
    for bad, says in (
        (good.clone().index_fill_(2, torch.tensor([5]), float("nan")), "^image holds NaN or infinite values$"),
        (good.clone().index_fill_(3, torch.tensor([0]), float("inf")), "^image holds NaN or infinite values$"),
        (torch.empty(1, 3, 224, 224, device="meta"), "on the 'meta' device, which holds no values"),
    ):
        with pytest.raises(ImageLoadError, match=says):
            explainer.explain(bad, geometry=geometry)


def test_model_inputs_have_a_size_limit(explainer):
    with pytest.raises(ImageLoadError, match=r"^geometry 'input' takes model inputs up to 2048 pixels a side, got 3000x3000; "):
        explainer.explain(torch.rand(1, 3, 3000, 3000), geometry="input")
    with pytest.raises(ImageLoadError, match=r"too thin to explain"):
        explainer.explain(torch.rand(1, 3, 8, 2000), geometry="input")


def test_map_at_original_out_of_range_is_one_line(explainer):
    explanation = explainer.explain(np.zeros((64, 64, 3), np.uint8))
    assert explanation.map_at_original(0).shape == (64, 64) and explanation.map_at_original(-1).shape == (64, 64)
    for index, k in ((5, 0), (1, 0), (-2, 0), (0, 3), (0.5, 0), ("0", 0)):
        with pytest.raises(OptionError, match=r"index .* is out of range: this explanation has 1 (image|class)\(s\), 0 to 0$"):
            explanation.map_at_original(index, k)


# --- files that are not files --------------------------------------------------------------------------
def test_image_reads_refuse_fifos_devices_and_huge_files_before_reading(tmp_path, monkeypatch):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match=r"photo\.jpg: is a FIFO, not a regular file$"):
        load_image(fifo)
    assert time.monotonic() - started < 5  # never blocks
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(ImageLoadError, match=r"zero\.jpg: is a device, not a regular file$"):
        load_image(tmp_path / "zero.jpg")
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(8 * 2**30)  # sparse: 8 GB that take no disk
    with pytest.raises(ImageLoadError, match=r"huge\.jpg: 8192 MB is over the 1024 MB limit for this file$"):
        load_image(huge)
    with pytest.raises(ImageLoadError, match=r"is a folder, not an image$"):
        load_image(tmp_path)


def test_every_reader_refuses_a_fifo(tmp_path, random_head_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for error in (CheckpointError, TrainingError, EvaluationError):
        with pytest.raises(error, match=r"f: is a FIFO, not a regular file$"):
            read_regular(fifo, 100, error)
    card_fifo = tmp_path / "h.json"
    (tmp_path / "h.safetensors").write_bytes(random_head_path.read_bytes())
    os.mkfifo(card_fifo)
    assert read_metadata(tmp_path / "h.safetensors").backbone == "efficientnet_lite0"  # the FIFO card is never opened
    os.mkfifo(tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError, match=r"no head checkpoint at"):  # nor a FIFO head
        load_head(tmp_path / "g.safetensors")
    from tame_core.studio.training import logged_steps

    assert logged_steps(fifo, 10) == []


# --- interrupts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, tiny_data, delay):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tame_core", "train", "--data", str(tiny_data), "--out", str(tmp_path / "h"), *TINY,
               "--epochs", "200", "--batch-size", "2"]
    # a shell that started the tests in the background leaves SIGINT ignored, which children inherit: undo that
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # it had reached training: the first Ctrl-C finishes the step and saves
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert process.returncode in (130, -signal.SIGINT), err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert last in ("", "interrupted", "stopped before the first step; nothing was saved") or last.startswith("stopped; state saved to"), err


def test_an_uploaded_head_with_nan_weights_is_refused_and_not_kept(tmp_path, lite0):
    from tame_core.studio import store_uploaded_head

    weight = next(name for name, t in TAMEHead([40, 112, 320], 1000).state_dict().items() if t.is_floating_point())
    data = _saved_with(tmp_path, lite0, "nan", weight, float("nan")).read_bytes()
    folder = tmp_path / "uploads"
    with pytest.raises(CheckpointError) as error:
        store_uploaded_head("mine.safetensors", data, folder)
    assert str(error.value).startswith(f"mine.safetensors: {weight} holds 3 NaN or infinite value(s)")
    assert str(tmp_path) not in str(error.value) and list(folder.iterdir()) == []
