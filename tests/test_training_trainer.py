"""The trainer: frozen eval-mode backbone, the papers' optimiser, stop and exact resume, the card, errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core import load_backbone, load_head
from tame_core.cli import main
from tame_core.training import TrainConfig, TrainingError, train_head
from tame_core.training import trainer as trainer_module

TINY = "timm:test_efficientnet"  # a 0.4M-parameter timm model: real training code, fast on a CPU


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-images")
    rng = np.random.default_rng(1)
    for i in range(10):
        picture = (rng.random((40 + 3 * i, 56, 3)) * 255).astype(np.uint8)
        Image.fromarray(picture).save(folder / f"img{i}.{('png', 'jpg', 'webp')[i % 3]}")
    return folder


def tiny_config(folder: Path, out: Path, **overrides) -> TrainConfig:
    options = {"backbone": TINY, "weights": "random", "recipe": "paper", "epochs": 2, "batch_size": 4, "checkpoint_every": 2, "progress": False,
               "lr": 0.05}
    options.update(overrides)
    return TrainConfig(data=folder, out=out, **options)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_backbone_stays_frozen_and_in_eval_mode(tiny_folder, tmp_path, monkeypatch):
    torch.manual_seed(0)
    backbone = load_backbone(TINY, weights="random")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    modes = []
    backbone.net.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    monkeypatch.setattr(trainer_module, "load_backbone", lambda *args, **kwargs: backbone)
    steps = []
    out = train_head(tiny_config(tiny_folder, tmp_path / "head"), callback=lambda r: "event" not in r and steps.append(r))
    assert len(steps) == 6 and modes and not any(modes)  # every forward of the classifier ran in eval mode
    after = backbone.state_dict()
    for name, value in before.items():  # weights and batch-norm running statistics untouched
        assert torch.equal(value, after[name]), name
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    head, _ = load_head(out)
    fresh = torch.nn.BatchNorm2d(head.channels[0])
    assert not torch.equal(head.branches[0].bn.running_mean, fresh.running_mean)  # the head itself did train


def test_optimiser_decays_weights_not_biases():
    from tame_core.head import TAMEHead

    groups = trainer_module.parameter_groups(TAMEHead([4, 6], 5), 5e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    head = TAMEHead([4, 6], 5)
    names = [n for n, _ in head.named_parameters()]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) == sum(not n.endswith("bias") for n in names)
    assert len(groups[1]["params"]) == sum(n.endswith("bias") for n in names)
    assert not decayed & {id(p) for p in groups[1]["params"]}


def test_stop_then_resume_gives_exactly_the_uninterrupted_head(tiny_folder, tmp_path):
    recipe = {"top_k": 3, "classes_per_image": 1}  # random class draws must resume exactly too
    reference = train_head(tiny_config(tiny_folder, tmp_path / "full", **recipe))
    stop = threading.Event()

    def stop_after_three(record: dict) -> None:
        if record.get("step") == 3:
            stop.set()

    out = train_head(tiny_config(tiny_folder, tmp_path / "split", **recipe), callback=stop_after_three, stop=stop)
    _, card = load_head(out)
    assert card.training["finished"] is False and card.training["steps"] == 3
    train_head(tiny_config(tiny_folder, tmp_path / "split", resume=True, **recipe))
    head_a, _ = load_head(reference)
    head_b, card_b = load_head(out)
    assert card_b.training["finished"] is True and card_b.training["steps"] == 6
    for (name, a), b in zip(head_a.state_dict().items(), head_b.state_dict().values()):
        assert torch.equal(a, b), name
    log = read_log(tmp_path / "split.log.jsonl")
    assert [r["step"] for r in log if "step" in r and "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert [r["event"] for r in log if "event" in r and r["event"] != "checkpoint"] == ["start", "stopped", "resume", "done"]


def test_log_records_every_step_with_loss_terms_and_schedule(tiny_folder, tmp_path):
    records = []
    out = train_head(tiny_config(tiny_folder, tmp_path / "h", epochs=3), callback=records.append)
    log = read_log(out.with_suffix(".log.jsonl"))
    assert log == records
    steps = [r for r in log if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 10))
    assert {"step", "epoch", "loss", "ce", "area", "tv", "lr", "images", "seconds"} <= set(steps[0])
    assert [r["images"] for r in steps[:3]] == [4, 4, 2]  # 10 images in batches of 4
    lrs = [r["lr"] for r in steps]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(0.05, rel=0.01)  # one cycle up, then down
    assert lrs[-1] < lrs[0]
    for r in steps:
        assert r["loss"] == pytest.approx(1.5 * r["ce"] + 2 * r["area"] + 0.01 * r["tv"], rel=1e-4)


def test_card_records_recipe_data_and_split(tiny_folder, tmp_path):
    (tiny_folder.parent / "extra").mkdir(exist_ok=True)
    out = train_head(tiny_config(tiny_folder, tmp_path / "head.safetensors", epochs=1, init="random", augment="heavy"))
    head, card = load_head(out)
    assert card.backbone == "test_efficientnet" and card.layers == list(load_backbone(TINY, "random").default_layers)
    assert card.training["recipe"]["augment"] == "heavy" and card.training["recipe"]["loss"]["area"] == 2.0
    assert card.data["images"] == 10 and card.data["skipped_unreadable"] == 0
    assert card.training["images_per_second"] > 0 and head.num_classes == 1000
    assert card.training["cpu_threads"] == torch.get_num_threads()  # bit-for-bit reproduction needs the same count
    # ... and the same kind of chip: its name and the vector width PyTorch's kernels use on it
    assert card.training["processor"].endswith("; " + torch.backends.cpu.get_cpu_capability())
    assert len(card.training["processor"]) > len(torch.backends.cpu.get_cpu_capability()) + 2


def test_resume_refuses_a_state_from_another_run(tiny_folder, tmp_path):
    train_head(tiny_config(tiny_folder, tmp_path / "head", epochs=1))
    with pytest.raises(TrainingError, match="different run.*epochs"):
        train_head(tiny_config(tiny_folder, tmp_path / "head", epochs=3, resume=True))
    with pytest.raises(TrainingError, match="no training state"):
        train_head(tiny_config(tiny_folder, tmp_path / "other", resume=True))


def test_cam_init_refuses_a_layer_the_classifier_does_not_pool(tiny_folder, tmp_path):
    with pytest.raises(TrainingError, match="--init cam"):
        train_head(tiny_config(tiny_folder, tmp_path / "head", init="cam"))


def test_config_rejects_bad_options(tmp_path):
    with pytest.raises(TrainingError, match="epochs must be at least 1"):
        TrainConfig(data=tmp_path, out=tmp_path / "h", epochs=0)
    with pytest.raises(TrainingError, match="init 'magic'"):
        TrainConfig(data=tmp_path, out=tmp_path / "h", init="magic")
    with pytest.raises(TrainingError, match="classes_per_image must be between 1 and top_k"):
        TrainConfig(data=tmp_path, out=tmp_path / "h", top_k=2, classes_per_image=3)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "h"), "--weights", "random",
                 "--backbone", TINY, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --data") and "not a folder" in error and "\n" not in error
    (tmp_path / "only.txt").write_text("no images here")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "h"), "--weights", "random",
                 "--backbone", TINY, "--no-progress"]) == 2
    assert "no readable images" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "h"), "--backbone", TINY, "--weights",
                 "random", "--layers", "blocks.9", "--no-progress"]) == 2
    assert "unknown layer 'blocks.9'" in capsys.readouterr().err


# --- resume never mixes runs; a new run never silently replaces an old one --------------------------
def stopped_run(folder: Path, out: Path, at: int = 2, **overrides) -> TrainConfig:
    """A run stopped after step ``at``: its state is resumable."""
    stop = threading.Event()
    config = tiny_config(folder, out, **overrides)
    train_head(config, callback=lambda r: "loss" in r and r["step"] == at and stop.set(), stop=stop)
    return config


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_resume_refuses_other_images_even_as_many_with_the_same_names(tiny_folder, tmp_path):
    config = stopped_run(tiny_folder, tmp_path / "head")
    state_before = config.state_path.read_bytes()
    log_before = config.log_path.read_text()
    other = copy_folder(tiny_folder, tmp_path / "other")
    victim = sorted(other.glob("*.png"))[0]
    pixels = np.asarray(Image.open(victim)).copy()
    pixels[0, 0] ^= 0xFF  # one pixel of one image: same names, same count
    Image.fromarray(pixels).save(victim)
    with pytest.raises(TrainingError, match=r"is from a different run \(data: other image files \(saved: 10 files, digest [0-9a-f]{12}; now: 10 files, digest [0-9a-f]{12}\)\)$"):
        train_head(tiny_config(other, tmp_path / "head", resume=True))
    assert config.state_path.read_bytes() == state_before and config.log_path.read_text() == log_before  # untouched

    moved = copy_folder(tiny_folder, tmp_path / "moved" / "copy")  # the same images elsewhere: the same data
    records = []
    train_head(tiny_config(moved, tmp_path / "head", resume=True), callback=records.append)
    assert records[0]["event"] == "resume" and records[0]["step"] == 2
    assert load_head(config.out)[1].data["files_sha256"] == load_state_key(config)["data"]["files_sha256"]


def load_state_key(config: TrainConfig) -> dict:
    from tame_core.training.state import load_state

    return load_state(config.state_path)["key"]


def test_a_new_run_never_replaces_an_earlier_one_without_overwrite(tiny_folder, tmp_path):
    config = stopped_run(tiny_folder, tmp_path / "head")
    saved = {path: path.read_bytes() for path in (config.state_path, config.log_path, config.out, config.out.with_suffix(".json"))}
    with pytest.raises(TrainingError, match=(
        r"^--out .*head\.safetensors: an earlier run's files are there \(head\.state\.pt, head\.log\.jsonl, head\.safetensors, "
        r"head\.json\); add --resume to continue it, --overwrite to start over, or choose another --out$"
    )):
        train_head(tiny_config(tiny_folder, tmp_path / "head"))
    assert {path: path.read_bytes() for path in saved} == saved  # nothing truncated or replaced

    records = []
    train_head(tiny_config(tiny_folder, tmp_path / "head", overwrite=True), callback=records.append)
    assert records[0]["event"] == "start" and read_log(config.log_path)[0]["event"] == "start"
    assert [r["step"] for r in read_log(config.log_path) if "loss" in r] == list(range(1, 7))  # a fresh log, steps 1..6
    with pytest.raises(TrainingError, match="resume and overwrite exclude each other"):
        tiny_config(tiny_folder, tmp_path / "head", resume=True, overwrite=True)


def test_cli_new_run_is_refused_then_overwrite_starts_over(tiny_folder, tmp_path, capsys):
    command = ["train", "--data", str(tiny_folder), "--out", str(tmp_path / "h"), "--backbone", TINY, "--weights", "random",
               "--epochs", "1", "--batch-size", "5", "--no-progress"]
    assert main(command) == 0
    log = (tmp_path / "h.log.jsonl").read_text()
    capsys.readouterr()
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --out") and "add --resume to continue it, --overwrite to start over" in error and "\n" not in error
    assert (tmp_path / "h.log.jsonl").read_text() == log
    assert main([*command, "--overwrite"]) == 0
    assert [r["step"] for r in read_log(tmp_path / "h.log.jsonl") if "loss" in r] == [1, 2]


def test_a_state_that_does_not_fit_is_refused_and_loses_nothing(tiny_folder, tmp_path):
    from tame_core.training.state import load_state, save_state

    config = stopped_run(tiny_folder, tmp_path / "head")
    state = load_state(config.state_path)
    state["head"]["fuser.weight"] = state["head"]["fuser.weight"][:10]
    save_state(config.state_path, state)
    log_before = config.log_path.read_text()
    with pytest.raises(TrainingError, match=r"does not fit this run's head: fuser\.weight is \(10, "):
        train_head(tiny_config(tiny_folder, tmp_path / "head", resume=True))
    state.pop("optimizer")
    save_state(config.state_path, state)
    with pytest.raises(TrainingError, match=r"is incomplete: no optimizer$"):
        train_head(tiny_config(tiny_folder, tmp_path / "head", resume=True))
    assert config.log_path.read_text() == log_before


def test_batches_that_do_not_divide_the_images_with_a_bad_file_in_the_middle(tmp_path):
    """8 files, the 4th unreadable: 7 images at batch 3 give steps of 3, 3 and 1 images each epoch."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        if i == 3:
            (folder / f"img{i}.png").write_bytes(b"not a png at all")
        else:
            Image.fromarray((rng.random((36, 44, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    records = []
    out = train_head(tiny_config(folder, tmp_path / "head", batch_size=3), callback=records.append)
    steps = [r for r in records if "loss" in r]
    assert [(r["step"], r["epoch"], r["images"]) for r in steps] == [(1, 0, 3), (2, 0, 3), (3, 0, 1), (4, 1, 3), (5, 1, 3), (6, 1, 1)]
    _, card = load_head(out)
    assert card.data["images"] == 7 and card.data["skipped_unreadable"] == 1 and card.training["finished"] is True

    stop = threading.Event()  # stopped inside the second epoch's short batch boundary, then resumed: the same head
    split = tmp_path / "split"
    train_head(tiny_config(folder, split, batch_size=3), callback=lambda r: "loss" in r and r["step"] == 4 and stop.set(), stop=stop)
    resumed = []
    train_head(tiny_config(folder, split, batch_size=3, resume=True), callback=resumed.append)
    assert [(r["step"], r["images"]) for r in resumed if "loss" in r] == [(5, 3), (6, 1)]
    whole, _ = load_head(out)
    parts, _ = load_head(split)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, parts.state_dict()[name]), name


# --- the destroying and insertion terms: off by default, bit for bit the papers' head ----------------
def test_the_new_terms_off_train_the_papers_head_bit_for_bit_with_no_extra_forward(tiny_folder, tmp_path, monkeypatch):
    torch.manual_seed(0)
    backbone = load_backbone(TINY, weights="random")
    forwards = []
    backbone.net.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    monkeypatch.setattr(trainer_module, "load_backbone", lambda *args, **kwargs: backbone)
    common = ["--data", str(tiny_folder), "--backbone", TINY, "--weights", "random", "--epochs", "1", "--batch-size", "4",
              "--lr", "0.05", "--no-progress"]
    heads, cards, calls = {}, {}, {}
    for name, extra in [("absent", []), ("zero", ["--destroy-weight", "0", "--insert-weight", "0"]),
                        ("destroy", ["--destroy-weight", "0.5"]), ("both", ["--destroy-weight", "0.5", "--insert-weight", "0.5"]),
                        ("black", ["--destroy-weight", "0.5", "--destroy-fill", "black"])]:
        forwards.clear()
        assert main(["train", *common, "--out", str(tmp_path / name), *extra]) == 0
        heads[name], cards[name] = load_head(tmp_path / f"{name}.safetensors")
        calls[name] = len(forwards)
    absent, zero = heads["absent"].state_dict(), heads["zero"].state_dict()
    assert all(torch.equal(absent[k], zero[k]) for k in absent)  # weights 0 = the options absent, bit for bit
    assert cards["zero"].training["recipe"] == cards["absent"].training["recipe"]  # the card reads as before the terms
    assert "destroy" not in cards["zero"].training["recipe"]["loss"] and cards["destroy"].training["recipe"]["loss"]["destroy"] == 0.5
    steps = 3  # 10 images in batches of 4
    extra = {name: count - calls["absent"] for name, count in calls.items()}  # beyond setup + clean and masked forwards
    assert extra == {"absent": 0, "zero": 0, "destroy": steps, "both": 2 * steps, "black": steps}  # one more forward per term on
    changed = heads["destroy"].state_dict()
    assert any(not torch.equal(absent[k], changed[k]) for k in absent)  # the term does train the head
    assert "destroy_fill" not in cards["destroy"].training["recipe"]["loss"]  # the default fill: the card reads as before
    assert cards["black"].training["recipe"]["loss"]["destroy_fill"] == "black"
    black = heads["black"].state_dict()
    assert any(not torch.equal(black[k], changed[k]) for k in black)  # the fill changes what is learnt


def test_the_destroying_term_is_logged_summed_and_part_of_the_resume_key(tiny_folder, tmp_path):
    from tame_core.training import LossWeights

    records = []
    train_head(tiny_config(tiny_folder, tmp_path / "h", epochs=1, loss=LossWeights(destroy=0.5)), callback=records.append)
    steps = [r for r in records if "event" not in r]
    for r in steps:
        assert 0 <= r["destroy"] <= 1 and "insert" not in r
        assert r["loss"] == pytest.approx(1.5 * r["ce"] + 2 * r["area"] + 0.01 * r["tv"] + 0.5 * r["destroy"], rel=1e-4)
    stopped_run(tiny_folder, tmp_path / "s", loss=LossWeights(destroy=0.5))
    with pytest.raises(TrainingError, match=r"different run.*loss"):
        train_head(tiny_config(tiny_folder, tmp_path / "s", resume=True))  # the papers' loss now: refused
    with pytest.raises(TrainingError, match=r"different run.*loss"):
        train_head(tiny_config(tiny_folder, tmp_path / "s", resume=True, loss=LossWeights(destroy=0.5, insert=0.1)))
    train_head(tiny_config(tiny_folder, tmp_path / "s", resume=True, loss=LossWeights(destroy=0.5)))  # the same: resumes
