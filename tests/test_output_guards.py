"""Every output has one writer, and a failed write says in one line what was kept (issue 24, class 2).

The guards live in :mod:`tame_core.atomic`: :class:`~tame_core.atomic.OutputLock` and
:func:`~tame_core.atomic.write_failures` (inside :func:`~tame_core.atomic.atomic_path`).
"""

from __future__ import annotations

import errno
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

from tame_core import load_head
from tame_core.atomic import OutputLock, atomic_path
from tame_core.cli import main
from tame_core.errors import OutputError
from noise_images import noise_folder

TINY = ["--backbone", "timm:test_efficientnet", "--weights", "random", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return noise_folder(tmp_path_factory.mktemp("tiny"), 6)


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


# --- the lock ---------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_the_lock_goes_with_its_holder(tmp_path):
    out = tmp_path / "head.safetensors"
    with OutputLock(out, "--out") as first:
        assert first.path == tmp_path / "head.safetensors.lock"
        assert first.path.read_text().split()[0] == str(os.getpid())
        for other in (out, str(out)):  # the same output named twice: refused whatever the spelling
            with pytest.raises(OutputError) as error:
                OutputLock(other, "--out").acquire()
            assert str(error.value) == (
                f"--out {out} is being written by another run (process {os.getpid()} on {os.uname().nodename}); "
                "wait for it to finish or choose another output"
            )
        OutputLock(tmp_path / "other.safetensors").acquire().release()  # another output is free
    assert not first.path.exists()
    OutputLock(out).acquire().release()  # free again once released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "evaluation_state.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = tmp_path / "evaluation_state.json.lock"
    lock_file.write_text(f"{dead.stdout.strip()} somehost\n")  # left by a run that was killed
    with OutputLock(out) as lock:
        assert lock_file.read_text().split()[0] == str(os.getpid())
    # a lock held by a living process elsewhere is refused
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from tame_core.atomic import OutputLock; import sys, time; OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"being written by another run \(process {holder.pid} on "):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    OutputLock(out).acquire().release()  # killed: its lock is taken over


def test_two_concurrent_train_runs_on_one_new_out_one_runs_one_is_refused(tmp_path, tiny_data):
    out = tmp_path / "head.safetensors"
    command = [sys.executable, "-m", "tame_core", "train", "--data", str(tiny_data), "--out", str(out), *TINY,
               "--epochs", "40", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "head.safetensors.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock.exists(), first.communicate()
    # the first run is paused while it holds the lock (a stopped process keeps it), so however fast the
    # machine, the second run starts while the first is still writing
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first run ended before it could be paused: make it longer"
        # even --overwrite, which would remove an earlier run's files, is refused while the first run writes them
        second = subprocess.run([*command, "--overwrite"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out_first, err_first = first.communicate(timeout=600)
    assert first.returncode == 0, err_first
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.splitlines() == [
        f"error: --out {out} is being written by another run (process {first.pid} on {os.uname().nodename}); "
        "wait for it to finish or choose another output"
    ]
    assert out_first.strip() == str(out)
    head, metadata = load_head(out)  # the first run's head, whole, and its log
    assert metadata.training["finished"] and metadata.training["steps"] == 120
    steps = [json.loads(line) for line in out.with_name("head.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == list(range(1, 121))
    assert not lock.exists()


# --- disk full and no permission ---------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EACCES, "Permission denied"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1344 vs 1232"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    ],
)
def test_any_failed_write_is_one_line_and_keeps_the_previous_file(tmp_path, failure):
    target = tmp_path / "state.json"
    target.write_text("previous")
    with pytest.raises(OutputError) as error:
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise failure
    reason = failure.strerror if isinstance(failure, OSError) else "No space left on device" if "pos" in str(failure) else "write failed"
    assert str(error.value) == f"{target}: cannot write ({reason}); the previous state.json is kept"
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(OutputError, match=r"new\.json: cannot write \(.+\); nothing was written$"):
        with atomic_path(tmp_path / "new.json"):
            raise failure
    with pytest.raises(RuntimeError, match="a bug"):  # anything else keeps its traceback
        with atomic_path(target):
            raise RuntimeError("a bug")


def test_new_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        import importlib

        import tame_core.atomic as atomic

        importlib.reload(atomic)
        atomic.write_atomically(tmp_path / "card.json", "{}")
        assert (tmp_path / "card.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        importlib.reload(atomic)
        atomic.write_atomically(tmp_path / "private.json", "{}")
        assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
        importlib.reload(atomic)


def test_disk_full_during_train_keeps_the_last_state_loadable_and_prints_one_line(tmp_path, tiny_data, monkeypatch, capsys):
    from tame_core.training.state import load_state

    out = tmp_path / "head.safetensors"
    real_save, calls = torch.save, []

    def full_disk_on_the_second_state(obj, target, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "tame-training-state":
            calls.append(1)
            if len(calls) == 2:
                real_save(obj, target, *args, **kwargs)  # writes part of the file...
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1344 vs 1232")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_on_the_second_state)
    code = main(["train", "--data", str(tiny_data), "--out", str(out), *TINY, "--epochs", "2", "--batch-size", "2",
                 "--checkpoint-every", "2"])
    printed = capsys.readouterr()
    state = out.with_name("head.state.pt")
    assert code == 2 and _errors(printed.err) == [
        f"error: {state}: cannot write (No space left on device); the previous head.state.pt is kept"
    ]
    assert load_state(state)["step"] == 2  # the first checkpoint, whole
    assert not out.exists() and not list(tmp_path.glob(".*tmp")) and not (tmp_path / "head.safetensors.lock").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--data", str(tiny_data), "--out", str(out), *TINY, "--epochs", "2", "--batch-size", "2",
                 "--checkpoint-every", "2", "--resume"]) == 0
    assert load_head(out)[1].training["steps"] == 6


def test_disk_full_during_evaluate_keeps_the_state_and_prints_one_line(tmp_path, sample_images, random_head_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for index, key in enumerate(("chelsea", "coffee", "astronaut")):
        Image.fromarray(np.ascontiguousarray(sample_images[key][:96, :128])).save(data / f"n0144076{index}_a.png")
    out = tmp_path / "results"
    command = ["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(data), "--methods", "tame",
               "--metrics", "adic", "--batch-size", "1", "--no-progress", "--out", str(out)]
    real_write, calls = Path.write_text, []

    def full_after_one(self, text, *args, **kwargs):
        if self.name.startswith(".evaluation_state.json."):
            calls.append(1)
            if len(calls) == 2:
                _enospc()
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_after_one)
    assert main(command) == 2
    state = out / "evaluation_state.json"
    assert _errors(capsys.readouterr().err) == [
        f"error: {state}: cannot write (No space left on device); the previous evaluation_state.json is kept"
    ]
    assert json.loads(state.read_text())["tally"]["images_done"] == 1
    monkeypatch.setattr(Path, "write_text", real_write)
    assert main([*command, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["results"][0]["images"] == 3


def test_a_second_evaluate_on_the_same_out_is_refused_before_it_touches_the_state(tmp_path, random_head_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "evaluation_state.json").write_text("a running evaluation's state")
    with OutputLock(out / "evaluation_state.json"):
        code = main(["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(tmp_path),
                     "--methods", "tame", "--out", str(out), "--no-progress"])
    assert code == 2 and _errors(capsys.readouterr().err) == [
        f"error: --out {out / 'evaluation_state.json'} is being written by another run "
        f"(process {os.getpid()} on {os.uname().nodename}); wait for it to finish or choose another output"
    ]
    assert (out / "evaluation_state.json").read_text() == "a running evaluation's state"
