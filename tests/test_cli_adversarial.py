"""The `tame` command under an adversarial user (issues 11 and 14): each refusal is one line, nothing is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core import TAMEHead, load_head, save_head
from tame_core.card import metadata_for
from tame_core.checkpoint import paths_for
from tame_core.cli import main
from noise_images import noise_folder


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _photo(sample_images, key: str, shift: int = 0) -> np.ndarray:
    return np.ascontiguousarray(sample_images[key][shift : shift + 120, shift : shift + 150])


def _explain(*args, head: Path) -> list[str]:
    return ["explain", *map(str, args), "--head", str(head), "--device", "cpu", "--no-progress"]


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


# --- outputs (issue 14.7) ---------------------------------------------------------------------------
def test_out_that_is_a_file_or_below_one_is_one_line(tmp_path, sample_images, random_head_path, capsys):
    photo = _save(tmp_path / "a.png", _photo(sample_images, "chelsea"))
    (tmp_path / "file").write_text("keep me")
    assert main(_explain(photo, "--out", tmp_path / "file", head=random_head_path)) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out {tmp_path / 'file'}: is a file, not a folder"]
    assert main(_explain(photo, "--out", tmp_path / "file" / "maps", head=random_head_path)) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out {tmp_path / 'file' / 'maps'}: cannot write there (Not a directory)"]
    assert main(_explain(photo, "--out", "/proc/tame-maps", head=random_head_path)) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --out /proc/tame-maps: cannot write there (No such file or directory)"]
    assert (tmp_path / "file").read_text() == "keep me"


def test_stems_are_unique_against_every_input(tmp_path, sample_images, random_head_path, capsys):
    """`same-2.jpg` beside two `same.jpg`, and `Cat.png` beside `cat.png`: one map each, none overwritten."""
    inputs = [
        _save(tmp_path / "a" / "same.jpg", _photo(sample_images, "chelsea")),
        _save(tmp_path / "b" / "same.jpg", _photo(sample_images, "coffee")),
        _save(tmp_path / "same-2.jpg", _photo(sample_images, "rocket")),
        _save(tmp_path / "c" / "Cat.png", _photo(sample_images, "astronaut")),
        _save(tmp_path / "d" / "cat.png", _photo(sample_images, "chelsea", 30)),
    ]
    out = tmp_path / "maps"
    assert main(_explain(*inputs, "--out", out, head=random_head_path)) == 0
    written = sorted(p.stem for p in out.glob("*.npy"))
    assert written == sorted(["same", "same-3", "same-2", "Cat", "cat-2"])
    overlays = {p.name: np.asarray(Image.open(p)) for p in out.glob("*_overlay.png")}
    assert len(overlays) == 5  # five different pictures, five different overlays
    assert len({o.tobytes() for o in overlays.values()}) == 5
    assert capsys.readouterr().out.count("explained '") == 5


def test_outputs_never_replace_an_input(tmp_path, sample_images, random_head_path):
    """Explaining a folder into itself, where `a_overlay.png` is an input: it is read, not overwritten."""
    inputs = [_save(tmp_path / "a.png", _photo(sample_images, "chelsea")), _save(tmp_path / "a_overlay.png", _photo(sample_images, "coffee"))]
    before = inputs[1].read_bytes()
    assert main(_explain(*inputs, "--out", tmp_path, "--batch-size", "1", head=random_head_path)) == 0
    assert inputs[1].read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["a-2.npy", "a_overlay.npy"]


def test_a_map_that_cannot_be_written_is_one_line_and_the_rest_go_on(tmp_path, sample_images, random_head_path, capsys):
    long_name = _save(tmp_path / ("x" * 245 + ".png"), _photo(sample_images, "chelsea"))  # x*245 + "_overlay.png" > 255
    good = _save(tmp_path / "good.png", _photo(sample_images, "coffee"))
    out = tmp_path / "maps"
    assert main(_explain(long_name, good, "--out", out, head=random_head_path)) == 1
    errors = _errors(capsys.readouterr().err)
    assert errors == [f"error: {long_name}: cannot write its map into {out} (File name too long)"]
    assert sorted(p.name for p in out.iterdir()) == ["good.npy", "good_overlay.png"]  # no half-written pair left


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
        ("--batch-size", "-3", "argument --batch-size: must be at least 1, got -3"),
        ("--batch-size", "two", "argument --batch-size: 'two' is not a whole number"),
        ("--top", "-1", "argument --top: must be at least 1, got -1"),
        ("--alpha", "5", "argument --alpha: must be between 0 and 1, got 5"),
        ("--alpha", "nan", "argument --alpha: must be between 0 and 1, got nan"),
    ],
)
def test_explain_option_values_are_checked_before_loading(tmp_path, random_head_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as info:
        main(_explain(tmp_path / "a.png", "--out", tmp_path, option, value, head=random_head_path))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_thin_and_unreadable_inputs_are_one_line_each(tmp_path, sample_images, random_head_path, capsys):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (20_000, 1)).save(thin)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    inputs = [_save(tmp_path / "a.png", _photo(sample_images, "chelsea")), thin, folder, _save(tmp_path / "b.png", _photo(sample_images, "coffee"))]
    out = tmp_path / "maps"
    assert main(_explain(*inputs, "--out", out, "--batch-size", "1", head=random_head_path)) == 1
    assert _errors(capsys.readouterr().err) == [
        f"error: {thin}: 20000x1 is too thin to explain (aspect ratio 20000:1, over the 10:1 limit); crop it first",
        f"error: {folder}: is a folder, not an image",
    ]
    assert sorted(p.name for p in out.glob("*.npy")) == ["a.npy", "b.npy"]


# --- heads named with a dot (issue 14.1) -----------------------------------------------------------------
def test_head_named_with_a_dot_and_no_suffix(tmp_path, sample_images, random_head_path, capsys):
    dots = tmp_path / "dots"
    dots.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(paths_for(random_head_path)[suffix == ".json"], dots / f"head.v2{suffix}")
    photo = _save(tmp_path / "a.png", _photo(sample_images, "chelsea"))
    assert main(_explain(photo, "--out", tmp_path / "maps", head=dots / "head.v2")) == 0
    assert (tmp_path / "maps" / "a.npy").is_file()


TINY = ["--backbone", "timm:test_efficientnet", "--weights", "random", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return noise_folder(tmp_path_factory.mktemp("tiny"), 4)


def test_train_out_with_a_dot_leaves_the_plain_name_alone(tmp_path, tiny_data, capsys):
    dots = tmp_path / "dots"
    dots.mkdir()
    (dots / "head.safetensors").write_bytes(b"precious tensors")
    (dots / "head.json").write_text("precious card")
    code = main(["train", "--data", str(tiny_data), "--out", str(dots / "head.v2.safetensors"), *TINY,
                 "--epochs", "1", "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    assert (dots / "head.safetensors").read_bytes() == b"precious tensors" and (dots / "head.json").read_text() == "precious card"
    assert sorted(p.name for p in dots.iterdir()) == [
        "head.json", "head.safetensors", "head.v2.json", "head.v2.log.jsonl", "head.v2.safetensors", "head.v2.state.pt",
    ]
    assert capsys.readouterr().out.strip() == str(dots / "head.v2.safetensors")
    assert load_head(dots / "head.v2")[1].backbone == "test_efficientnet"


# --- train and evaluate arguments ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--epochs", "0", "argument --epochs: must be at least 1, got 0"),
        ("--batch-size", "-2", "argument --batch-size: must be at least 1, got -2"),
        ("--lr", "nan", "argument --lr: must be a finite number, got nan"),
        ("--lr", "-1", "argument --lr: must be above 0, got -1"),
        ("--momentum", "nan", "argument --momentum: must be between 0 and 1, got nan"),
        ("--weight-decay", "-1", "argument --weight-decay: must be 0 or more, got -1"),
        ("--area-weight", "inf", "argument --area-weight: must be a finite number, got inf"),
        ("--destroy-weight", "-1", "argument --destroy-weight: must be 0 or more, got -1"),
        ("--insert-weight", "nan", "argument --insert-weight: must be a finite number, got nan"),
        ("--workers", "-1", "argument --workers: must be 0 or more, got -1"),
        ("--limit", "0", "argument --limit: must be at least 1, got 0"),
        ("--checkpoint-every", "0", "argument --checkpoint-every: must be at least 1, got 0"),
    ],
)
def test_train_option_values(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "h"), option, value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_train_out_below_a_file_fails_before_training(tmp_path, tiny_data, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "file" / "head.safetensors"), *TINY, "--epochs", "1"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out {tmp_path / 'file'}: is a file, not a folder"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
        ("--steps", "0", "argument --steps: must be at least 1, got 0"),
        ("--limit", "-1", "argument --limit: must be at least 1, got -1"),
        ("--metric-batch-size", "0", "argument --metric-batch-size: must be at least 1, got 0"),
    ],
)
def test_evaluate_option_values(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path), option, value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


@pytest.mark.parametrize(
    "value, message",
    [
        ("grey", "unknown fill 'grey'; choose one of mean, black, blur for both curves, or CURVE=FILL,... with curves deletion, insertion"),
        ("deletion=grey", "unknown fill 'grey' for deletion; choose one of mean, black, blur"),
        ("removal=black", "unknown curve 'removal' in the baseline; choose from deletion, insertion"),
    ],
)
def test_evaluate_baseline_names_each_curves_fill_strictly(tmp_path, capsys, value, message):
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path), "--baseline", value]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]  # before any model loads


def test_evaluate_out_that_is_a_file_fails_before_the_run(tmp_path, sample_images, random_head_path, capsys):
    data = tmp_path / "data"
    _save(data / "n01440764_a.png", _photo(sample_images, "chelsea"))
    (tmp_path / "file").write_text("x")
    code = main(["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(data), "--methods", "tame",
                 "--metrics", "adic", "--no-progress", "--out", str(tmp_path / "file")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out {tmp_path / 'file'}: is a file, not a folder"]


def test_evaluate_skips_a_thin_image_with_one_line(tmp_path, sample_images, random_head_path, capsys):
    data = tmp_path / "data"
    _save(data / "n01440764_a.png", _photo(sample_images, "chelsea"))
    _save(data / "n01443537_b.png", _photo(sample_images, "coffee"))
    Image.new("RGB", (20_000, 1)).save(data / "n01484850_thin.png")
    out = tmp_path / "results"
    code = main(["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(data), "--methods", "tame",
                 "--metrics", "adic", "--batch-size", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped: ")]
    assert skipped == [f"skipped: {data / 'n01484850_thin.png'}: 20000x1 is too thin to explain (aspect ratio 20000:1, over the 10:1 limit); crop it first"]
    assert json.loads((out / "results.json").read_text())["results"][0]["images"] == 2


# --- import-official ----------------------------------------------------------------------------------------
def _official_checkpoint(path: Path) -> Path:
    state = {}
    for i, channels in enumerate([40, 112, 320]):
        state[f"generic.attn_mech.convs.{i}.weight"] = torch.randn(channels, channels, 1, 1)
        state[f"generic.attn_mech.convs.{i}.bias"] = torch.zeros(channels)
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"generic.attn_mech.bns.{i}.{key}"] = torch.ones(channels)
        state[f"generic.attn_mech.bns.{i}.num_batches_tracked"] = torch.tensor(0)
    state["generic.attn_mech.fuser.weight"] = torch.randn(1000, 472, 1, 1)
    state["generic.attn_mech.fuser.bias"] = torch.zeros(1000)
    hyper = {"model_name": "efficientnet_lite0", "layers": ["blocks.2", "blocks.4", "blocks.6"]}
    torch.save({"state_dict": state, "hyper_parameters": hyper}, path)
    return path


def test_import_official_names_with_a_dot_and_bad_out(tmp_path, capsys):
    checkpoint = _official_checkpoint(tmp_path / "official.ckpt")
    (tmp_path / "official.safetensors").write_bytes(b"precious")
    assert main(["import-official", str(checkpoint), "--out", str(tmp_path / "official.v2")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'official.v2.safetensors'} (efficientnet_lite0, ")
    assert (tmp_path / "official.safetensors").read_bytes() == b"precious"
    assert load_head(tmp_path / "official.v2.safetensors")[0].num_classes == 1000
    (tmp_path / "file").write_text("x")
    assert main(["import-official", str(checkpoint), "--out", str(tmp_path / "file" / "x.safetensors")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out {tmp_path / 'file'}: is a file, not a folder"]


# --- push and pull (issue 14.9, 14.3) ---------------------------------------------------------------------
def test_push_uploads_no_local_paths_and_says_the_repo_is_public(fake_hub, lite0, tmp_path, capsys):
    torch.manual_seed(3)
    head = TAMEHead([40, 112, 320], 1000)
    secret = "/home/alice/projects/secret-client/weights/lite0.pth"
    metadata = metadata_for(head, lite0, lite0.default_layers,
                            training={"recipe": {"weights": secret, "notes": f"fine-tuned from {secret} on Tuesday"}},
                            data={"folder": "/home/alice/data/imagenet"})
    path = tmp_path / "mine.safetensors"
    save_head(head, metadata, path)
    paths_for(path)[1].unlink()  # a lone file (what app uploads are) pushes too
    assert main(["push", str(path), "team/no-leaks"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines()[0].startswith("pushing to team/no-leaks: the repo is PUBLIC, anyone can download the head")
    files = fake_hub.resolve("team/no-leaks", "main")[1]
    assert set(files) == {"head.safetensors", "head.json", "README.md"}
    for name, content in files.items():
        assert b"/home/alice" not in content and b"secret-client" not in content, name
    card = json.loads(files["head.json"])
    assert card["training"]["recipe"]["weights"] == "lite0.pth" and card["data"]["folder"] == "imagenet"
    assert card["training"]["recipe"]["notes"] == "fine-tuned from lite0.pth on Tuesday"
    pulled, _ = load_head(__import__("tame_core.hub", fromlist=["pull_head"]).pull_head("team/no-leaks"))
    assert torch.equal(pulled.fuser.weight, head.fuser.weight)
    assert main(["push", str(path), "team/private-one", "--private"]) == 0
    assert "created private if it is new" in capsys.readouterr().err


def test_push_refuses_a_tampered_head_and_a_bad_repo_id(fake_hub, random_head_path, tmp_path, capsys):
    copy = tmp_path / "copy.safetensors"
    shutil.copy(random_head_path, copy)
    assert main(["push", str(copy), "not a repo"]) == 2
    assert _errors(capsys.readouterr().err) == ["error: 'not a repo' is not a Hub repo id (owner/name: letters, digits, '-', '_', '.')"]
    raw = bytearray(copy.read_bytes())
    raw[-100] ^= 0xFF
    copy.write_bytes(bytes(raw))
    assert main(["push", str(copy), "team/tampered"]) == 2
    assert _errors(capsys.readouterr().err) == [
        f"error: {copy}: its tensors do not match the SHA-256 recorded inside it: the file is corrupt or was altered"
    ]
    assert fake_hub.resolve("team/tampered", "main") is None


def test_pull_of_a_hostile_card_is_one_line(fake_hub, random_head_path, capsys):
    tensors, card = paths_for(random_head_path)
    hostile = json.loads(card.read_text())
    hostile["num_classes"] = "1000"
    fake_hub.commit("team/hostile", {"head.safetensors": tensors.read_bytes(), "head.json": json.dumps(hostile).encode()})
    assert main(["pull", "team/hostile"]) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith("head.json: num_classes must be a whole number from 1 to 1000000, got '1000'")


def test_push_scrubs_paths_and_urls_from_keys_values_and_every_free_field(fake_hub, lite0, tmp_path, capsys):
    torch.manual_seed(4)
    head = TAMEHead([40, 112, 320], 1000)
    metadata = metadata_for(
        head, lite0, lite0.default_layers,
        training={"/home/alice/photos": 1, "from": "file:///home/alice/x/y.pth", "site": "see https://alice.example/private?key=1"},
        data={"folders": ["~/photos/set1", "C:\\Users\\alice\\pics", {"nested": {"/srv/data/a": "\\\\share\\alice\\b"}}]},
        metrics={"note": "log at /var/log/alice/run.txt"},
    )
    metadata.created = "2026-01-01T00:00:00+00:00 on /home/alice/box"
    path = tmp_path / "mine.safetensors"
    save_head(head, metadata, path)
    assert main(["push", str(path), "team/no-leaks-2"]) == 0
    capsys.readouterr()
    files = fake_hub.resolve("team/no-leaks-2", "main")[1]
    for name, content in files.items():
        for secret in (b"/home/alice", b"alice.example", b"file://", b"Users", b"/srv/", b"share", b"/var/log"):
            assert secret not in content, (name, secret)
    card = json.loads(files["head.json"])
    assert card["training"] == {"photos": 1, "from": "(link removed)", "site": "see (link removed)"}
    assert card["data"]["folders"][:2] == ["set1", "pics"] and card["layers"] == list(lite0.default_layers)
