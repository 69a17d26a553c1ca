"""Stop means stop: a stop flag checked in every forward, jobs that end within 2 s on the CPU, orphans that end themselves.

The latency tests run the real EfficientNet-Lite0 on the CPU and stop each kind of long work in the
middle: RISE (batches of masked images), Score-CAM and Ablation-CAM (forwards inside pytorch-grad-cam),
deletion curves and an evaluation. Each measured latency is written to
test-artifacts/stop-latencies.json for the record.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tame_core.methods import explain_with
from tame_core.stopping import Stopped, check, stop_on
from tame_core.studio import Job, JobState, LoadedModel, ModelChoice, Workspace, load_sample
from tame_core.studio import jobs as jobs_module
from tame_core.evaluation import EvaluationConfig
from tame_core.studio.evaluation import evaluation_work
from tame_core.studio import ResultCache, compare_methods, curve_points
from noise_images import noise_folder

LATENCIES = Path(__file__).resolve().parents[1] / "test-artifacts" / "stop-latencies.json"


class Step(nn.Module):
    """A 1x1 conv that notes when it runs."""

    def __init__(self, name: str, seen: list[str], channels: tuple[int, int]) -> None:
        super().__init__()
        self.name, self.seen, self.conv = name, seen, nn.Conv2d(*channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.name)
        return self.conv(x)


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.blocks = nn.Sequential(Step("0", self.seen, (3, 4)), Step("1", self.seen, (4, 4)), Step("2", self.seen, (4, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


def test_a_set_flag_stops_the_next_block_and_the_hooks_go_away():
    net, stop, counted = Blocks(), threading.Event(), []
    with stop_on(net, stop, counted.append):
        net(torch.zeros(2, 3, 4, 4))
        assert counted == [2] and net.seen == ["0", "1", "2"]
        net.seen.clear()
        net.blocks[1].register_forward_hook(lambda m, a, out: stop.set())  # the flag is set mid-forward
        with pytest.raises(Stopped):
            net(torch.zeros(1, 3, 4, 4))
        assert net.seen == ["0", "1"]  # block "2" never ran
    net.seen.clear()
    net(torch.zeros(1, 3, 4, 4))  # outside the context the stopped flag no longer matters
    assert net.seen == ["0", "1", "2"] and counted == [2, 1]
    assert not any(m._forward_pre_hooks for m in net.modules())  # every hook was removed
    with pytest.raises(Stopped):
        check(stop)
    check(None)


def test_the_flag_only_stops_the_thread_that_watches():
    net, stop = Blocks(), threading.Event()
    stop.set()
    outcome = {}
    with stop_on(net, stop):
        worker = threading.Thread(target=lambda: outcome.setdefault("other", net(torch.zeros(1, 3, 4, 4)).shape))
        worker.start()
        worker.join(10)
        with pytest.raises(Stopped):
            net(torch.zeros(1, 3, 4, 4))
    assert outcome["other"] == (1, 2)  # another session's forward on the shared model ran untouched


# --- jobs that lose their session -------------------------------------------------------------------
def test_a_job_whose_session_is_gone_stops_itself(monkeypatch):
    monkeypatch.setattr(jobs_module, "ALIVE_GRACE_S", 0.5)

    def forever(context):
        while True:
            context.check_stop()
            time.sleep(0.01)

    connected = {"yes": True}
    job = Job("orphan", forever, alive=lambda: connected["yes"]).start()
    assert not job.wait(1.5) and job.running  # connected: keeps going
    connected["yes"] = False
    assert job.wait(3.0) and job.state is JobState.STOPPED
    assert job.stop_reason == jobs_module.SESSION_ENDED

    watched = Job("heartbeat", forever, orphan_after=1.0).start()
    for _ in range(4):  # a page polling it keeps it alive
        time.sleep(0.5)
        watched.touch()
    assert watched.running
    assert watched.wait(3.0) and watched.stop_reason.startswith("nobody watched it for")


def test_training_reports_its_first_phases_and_stops_in_them(tmp_path):
    from tame_core.training import TrainConfig, train_head

    for index in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
    config = TrainConfig(
        data=tmp_path, out=tmp_path / "head.safetensors", backbone="timm:test_efficientnet", weights="random", recipe="paper",
        epochs=1, batch_size=2, progress=False,
    )
    stop, phases = threading.Event(), []

    def phase(text: str) -> None:
        phases.append(text)
        if text.startswith("checking"):
            stop.set()  # Stop pressed while the images are being checked

    with pytest.raises(Stopped):
        train_head(config, stop=stop, phase=phase)
    assert phases == ["loading the backbone (timm:test_efficientnet)", "checking that every image can be read"]
    assert not config.out.exists()  # stopped before anything was trained or saved


# --- stop latency on the real model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def model(explainer, random_head_path) -> LoadedModel:
    return LoadedModel(ModelChoice(head=str(random_head_path)), explainer)


@pytest.fixture(scope="module")
def subject(model):
    return Workspace().subject(model, load_sample("chelsea"), 281)


def record_latency(name: str, seconds: float) -> None:
    LATENCIES.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(LATENCIES.read_text()) if LATENCIES.exists() else {}
    known[name] = round(seconds, 3)
    LATENCIES.write_text(json.dumps(known, indent=2, sort_keys=True))


def stop_midway(job: Job, name: str, forwards: int = 16, timeout: float = 300) -> float:
    """Wait until ``job`` has sent ``forwards`` images forward, ask it to stop, return how long it took to end."""
    deadline = time.monotonic() + timeout
    while job.running and job.forwards < forwards and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.running, f"{name} ended before it could be stopped: {job.state} {job.error}"
    asked = time.monotonic()
    job.stop()
    assert job.wait(120), f"{name} ignored Stop"
    latency = time.monotonic() - asked
    record_latency(name, latency)  # the figure, kept in test-artifacts/; a busy machine can stretch it
    assert job.state is JobState.STOPPED, job.error
    # counted, not timed: after the ask, at most the forward that finds the flag set starts
    assert job.forwards_after_stop <= 1, f"{name} started {job.forwards_after_stop} forwards after Stop"
    return latency


@pytest.mark.parametrize("method", ["rise", "scorecam", "ablationcam"])
def test_long_methods_stop_at_the_next_forward(model, subject, method):
    cache = ResultCache()
    job = Job(method, lambda context: compare_methods(subject, [method], context, cache)).start()
    stop_midway(job, f"compare {method}")
    assert cache.get(subject.key("map", method)) is None  # nothing half-done is kept as a result
    modules = [type(m).__name__ for m in model.explainer.backbone.modules()]
    assert "AblationLayer" not in modules  # Ablation-CAM's swapped-in layer is put back
    images = subject.explanation.inputs
    assert explain_with(model.explainer, images, 281, "gradcam").forward_passes == 1  # the model still works


def test_score_cam_stops_while_it_prepares_its_masks(model, subject):
    """Stop asked the moment Score-CAM's first forward ends, on a 1280-channel layer: upstream builds every
    masked copy (1.1 GB) before its next forward (measured 2.7-3.0 s); ours builds them batch by batch."""
    explainer, inputs = model.explainer, subject.explanation.inputs

    def work(context):
        handle = explainer.backbone.register_forward_hook(lambda *args: context._job.stop())  # after the first forward
        try:
            with model.busy(), context.watching(explainer.backbone):
                return explain_with(explainer, inputs, 281, "scorecam", layer="bn2")
        finally:
            handle.remove()

    job = Job("scorecam bn2", work).start()
    assert job.wait(60) and job.state is JobState.STOPPED, job.error
    record_latency("scorecam (bn2, 1280 channels) stopped while preparing", job.stop_latency)
    assert job.forwards == 1 and job.forward_calls == 1  # stopped before a second forward, masks or not


def test_curves_stop_at_the_next_forward(subject):
    cache = ResultCache()
    job = Job("curves", lambda context: curve_points(subject, ["tame"], context, steps=100, cache=cache)).start()
    stop_midway(job, "deletion curves (tame, 100 steps)")
    assert cache.get(subject.key("curve", "tame", 100, "blur")) is None


def test_an_evaluation_stops_at_the_next_forward_and_keeps_no_half_batch(tmp_path, random_head_path):
    data = noise_folder(tmp_path / "images", 4)
    choice = ModelChoice(head=str(random_head_path))
    config = EvaluationConfig(data=str(data), methods=("scorecam",), steps=10)
    job = Job("evaluate", lambda context: evaluation_work(choice, config, context, tmp_path / "state")).start()
    stop_midway(job, "evaluation (scorecam)", forwards=40)
    report = job.result
    assert report.settings["images_done"] == 0 and report.rows() == []  # the unfinished batch is not half-counted
