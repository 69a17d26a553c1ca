"""`tame evaluate` under torchrun: 2 processes (gloo, CPU) give the rows and the report of one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tame_core.cli import main
from noise_images import noise_folder


@pytest.mark.slow
def test_two_processes_give_the_rows_and_report_of_one(tmp_path, random_head_path, capsys):
    folder = noise_folder(tmp_path / "images", 10, bad_at=6)
    arguments = ["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(folder), "--methods", "tame,gradcam",
                 "--metrics", "adic,curves", "--steps", "4", "--baseline", "black", "--batch-size", "3", "--no-progress"]
    assert main([*arguments, "--out", str(tmp_path / "one")]) == 0
    one_table = capsys.readouterr().out
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tame_core", *arguments, "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two").glob("evaluation_state*")) == [
        "evaluation_state.rank0-of-2.json", "evaluation_state.rank1-of-2.json"]
    one = list(csv.DictReader((tmp_path / "one" / "per_image.csv").open()))
    two = list(csv.DictReader((tmp_path / "two" / "per_image.csv").open()))
    assert [(r["image"], r["method"]) for r in two] == [(r["image"], r["method"]) for r in one]
    assert len(one) == 18  # 9 readable images, 2 methods
    for mine, theirs in zip(two, one):
        for name in ("AD100", "IC50", "AD15", "deletion_auc", "insertion_auc", "forward_passes"):
            assert float(mine[name]) == pytest.approx(float(theirs[name]), rel=1e-4, abs=1e-4), (mine["image"], name)  # csv: 6 digits
    reports = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert reports[1]["skipped"] == reports[0]["skipped"] == [f"{folder / 'img6.png'}: not an image (or a format Pillow cannot read)"]
    for mine, theirs in zip(reports[1]["results"], reports[0]["results"]):
        for name, value in theirs.items():
            if isinstance(value, str):
                assert mine[name] == value
            elif name != "ms_per_image":  # times differ
                assert mine[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    assert result.stdout.splitlines()[0] == one_table.splitlines()[0]  # rank 0 alone prints the table
    assert len([line for line in result.stdout.splitlines() if line.startswith("tame ")]) == 1


@pytest.mark.slow
def test_two_processes_killed_mid_run_resume_without_redoing_an_image(tmp_path, random_head_path):
    """Both ranks killed (SIGKILL) once each has finished an image; `--resume` finishes the run: the rows
    finished before the kill come back unchanged (their own timings: not computed again), and the report
    has every image once. The same with one process more is refused in one line."""
    import signal
    import time

    folder = noise_folder(tmp_path / "images", 8)
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tame_core", "evaluate", "--head", str(random_head_path),
               "--device", "cpu", "--data", str(folder), "--methods", "tame", "--metrics", "adic,curves", "--steps", "8",
               "--baseline", "black", "--batch-size", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    states = [out / f"evaluation_state.rank{rank}-of-2.json" for rank in (0, 1)]

    def done(path: Path) -> list[str]:
        try:
            return json.loads(path.read_text())["tally"]["done"]
        except (OSError, ValueError):
            return []

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None and not all(done(state) for state in states):
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {rank: json.loads(states[rank].read_text())["tally"]["rows"] for rank in (0, 1)}
    assert all(0 < len(rows) < 4 for rows in before.values())

    more = [str(torchrun), "--standalone", "--nproc_per_node", "3", *command[4:], "--resume"]
    refused = subprocess.run(more, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert refused.returncode != 0 and "holds the state of a run with another number of processes" in refused.stderr

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = {rank: json.loads(states[rank].read_text())["tally"]["rows"] for rank in (0, 1)}
    for rank in (0, 1):
        assert after[rank][: len(before[rank])] == before[rank]  # kept as they were, timings included
        assert [row["image"] for row in after[rank]] == [f"img{i}.png" for i in range(rank, 8, 2)]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [row["image"] for row in rows] == [f"img{i}.png" for i in range(8)]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(item[5:]) for item in environ if item.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.slow
def test_one_rank_killed_under_max_restarts_finishes_without_redoing_an_image(tmp_path, random_head_path):
    """Rank 1 alone is killed (SIGKILL) mid-run under `torchrun --max-restarts 1`: torchrun restarts both
    ranks, each continues its own state, and the run ends with every image once, the rows finished before
    the kill unchanged, and exactly the forwards of an uninterrupted run (counted in the states: no finished
    image computed twice). Rank 0's progress bar counts both ranks' images."""
    import re
    import signal
    import time

    folder = noise_folder(tmp_path / "images", 8)
    arguments = ["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(folder), "--methods", "tame",
                 "--metrics", "adic,curves", "--steps", "8", "--baseline", "black", "--batch-size", "1"]
    assert main([*arguments, "--no-progress", "--out", str(tmp_path / "one")]) == 0
    uninterrupted = json.loads((tmp_path / "one" / "evaluation_state.json").read_text())["tally"]["forwards"]

    torchrun = Path(sys.executable).with_name("torchrun")
    # PyTorch issue 135712: with the store torchrun shares with its workers, a restarted worker may read the
    # previous attempt's gloo addresses and fail or hang; the README says to set this with --max-restarts
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}

    def rows(path: Path) -> list[dict]:
        try:
            return json.loads(path.read_text())["tally"]["rows"]
        except (OSError, ValueError, KeyError):
            return []

    def killed_run(out: Path) -> tuple[int, str, str, dict, list[Path]]:
        command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "-m", "tame_core",
                   *arguments, "--out", str(out)]
        states = [out / f"evaluation_state.rank{rank}-of-2.json" for rank in (0, 1)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and process.poll() is None and not rows(states[1]):
                time.sleep(0.05)
            workers = {_rank_of(pid): pid for pid in _descendants(process.pid)}
            assert process.poll() is None and 1 in workers, "the run ended before rank 1 could be killed"
            os.kill(workers[1], signal.SIGKILL)
            before = {rank: rows(states[rank]) for rank in (0, 1)}
            assert 0 < len(before[1]) < 4
            stdout, stderr = process.communicate(timeout=900)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        return process.returncode, stdout, stderr, before, states

    # The restarted gloo group sometimes loses its connection ("Connection closed by peer", in 2 of about
    # 6 full runs on a 2-core machine, inside torch's rendezvous, not in our code): one fresh retry then.
    for attempt in range(2):
        code, stdout, stderr, before, states = killed_run(tmp_path / f"out{attempt}")
        if code == 0 or "Connection closed by peer" not in stderr:
            break
    assert code == 0, stderr[-3000:]
    after = {rank: rows(states[rank]) for rank in (0, 1)}
    for rank in (0, 1):
        assert after[rank][: len(before[rank])] == before[rank]  # kept as they were, timings included
        assert [row["image"] for row in after[rank]] == [f"img{i}.png" for i in range(rank, 8, 2)]
    counted = sum(json.loads(state.read_text())["tally"]["forwards"] for state in states)
    assert counted == uninterrupted > 0
    table = [line for line in stdout.splitlines() if line.startswith("tame ")]
    assert len(table) == 1 and table[0].split()[-1] == "8"
    bars = re.findall(r"evaluate:.*?\b(\d+)/(\d+)\b", stderr)  # rank 0's bar: both ranks' images
    assert bars and bars[-1] == ("8", "8")
