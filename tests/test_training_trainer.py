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
    options = {"backbone": TINY, "weights": "random", "epochs": 2, "batch_size": 4, "checkpoint_every": 2, "progress": False,
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
