"""Training as separate processes: a run killed with SIGKILL resumes, and 2-process DDP (gloo) on the CPU."""

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
from PIL import Image

from tame_core import load_head

TINY = ["--backbone", "timm:test_efficientnet", "--weights", "random"]


def make_folder(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def step_records(log: Path) -> list[dict]:
    """Complete step lines of a JSON-lines log (a killed writer may leave half a line)."""
    records = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "event" not in record:
            records.append(record)
    return records


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigkill_loses_at_most_checkpoint_every_steps_and_resume_finishes(tmp_path):
    data = make_folder(tmp_path / "data", 40)
    out, every = tmp_path / "head", 3
    command = [sys.executable, "-m", "tame_core", "train", "--data", str(data), "--out", str(out), *TINY,
               "--epochs", "4", "--batch-size", "2", "--checkpoint-every", str(every), "--no-progress"]
    log, total = out.with_suffix(".log.jsonl"), 4 * 20
    process = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and len(step_records(log)) >= 2 * every + 1:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    last_step = step_records(log)[-1]["step"]
    assert last_step < total
    from tame_core.training.state import load_state

    saved = load_state(out.with_suffix(".state.pt"))["step"]
    assert saved % every == 0 and 0 <= last_step - saved <= every

    # other arguments after the crash: refused with one line, and the state and log stay as they were
    state_bytes, log_text = out.with_suffix(".state.pt").read_bytes(), log.read_text()
    other = make_folder(tmp_path / "other", 40)  # the same names and sizes...
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(other / "img007.png")  # ...but one image differs
    tries = {
        "other data": ([*command, "--resume"], "different run (data: other image files"),
        "other recipe": ([*command, "--resume", "--lr", "0.5"], "different run (lr: saved 0.001, now 0.5)"),
        "no --resume": (command, "an earlier run's files are there"),
    }
    tries["other data"][0][tries["other data"][0].index(str(data))] = str(other)
    for name, (arguments, message) in tries.items():
        refused = subprocess.run(arguments, env=child_env(), capture_output=True, text=True, timeout=600, check=False)
        assert refused.returncode == 2 and message in refused.stderr, (name, refused.stderr[-2000:])
        assert len(refused.stderr.strip().splitlines()) == 1, (name, refused.stderr)
    assert out.with_suffix(".state.pt").read_bytes() == state_bytes and log.read_text() == log_text

    resumed = subprocess.run([*command, "--resume"], env=child_env(), capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in step_records(log)]
    after_kill = steps[steps.index(last_step) + 1 :]
    assert after_kill == list(range(saved + 1, total + 1))  # continued right after the saved step, to the end
    _, card = load_head(out)
    assert card.training["finished"] is True and card.training["steps"] == total


@pytest.mark.slow
def test_two_process_ddp_on_cpu_with_gloo(tmp_path):
    data = make_folder(tmp_path / "data", 12)
    out = tmp_path / "ddp" / "head"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tame_core", "train", "--data", str(data),
               "--out", str(out), *TINY, "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(str(out.with_suffix(".safetensors"))) == 2  # both ranks finished
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # 12 images / 2 ranks / batch 2, 2 epochs: logged once
    assert all(r["images"] == 4 for r in steps)  # the global batch
    start = next(r for r in log if r.get("event") == "start")
    assert start["world_size"] == 2 and start["total_steps"] == 6
    head, card = load_head(out)
    assert card.training["world_size"] == 2 and card.training["finished"] is True and head.num_classes == 1000


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_state_and_the_head_so_far(tmp_path):
    data = make_folder(tmp_path / "data", 40)
    out = tmp_path / "head"
    command = [sys.executable, "-m", "tame_core", "train", "--data", str(data), "--out", str(out), *TINY,
               "--epochs", "4", "--batch-size", "2", "--checkpoint-every", "1000", "--no-progress"]
    process = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out.with_suffix(".log.jsonl")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (log.exists() and step_records(log)):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr.strip().splitlines()[-1]
    from tame_core.training.state import load_state

    saved = load_state(out.with_suffix(".state.pt"))["step"]
    _, card = load_head(out)
    assert 1 <= saved < 80 and card.training["steps"] == saved and card.training["finished"] is False
