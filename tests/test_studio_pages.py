"""The decisions the pages used to make themselves, now in ``tame_core.studio``: the job sequence Compare
and the curves share, Evaluate's fresh-or-resume, Train's run settings and records, Branches' masks."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from noise_images import noise_folder
from tame_core.evaluation import EvaluationConfig
from tame_core.studio import (
    AUTO_START_SECONDS,
    CHECKPOINT_EVERY,
    NEARLY_FLAT,
    Estimate,
    Job,
    JobPlan,
    JobState,
    LoadedModel,
    MethodMap,
    ModelChoice,
    Workspace,
    can_resume_evaluation,
    compare_estimate,
    compare_plan,
    curves_estimate,
    curves_plan,
    evaluation_cost,
    evaluation_thumbnails,
    flat_map_warning,
    image_total,
    latest_preview,
    load_sample,
    masks_to_measure,
    resumed_steps,
    run_config,
    start_evaluation,
    state_path,
    thumbnail_folder,
    total_steps,
    training_config,
)
from tame_core.studio.costs import evaluation_estimate

FILLS = "deletion=mean,insertion=blur"


@pytest.fixture(scope="module")
def model(explainer, random_head_path) -> LoadedModel:
    return LoadedModel(ModelChoice(head=str(random_head_path)), explainer)


class StartRecorder:
    """A workspace stand-in that notes the jobs it is asked to start instead of running them."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, object]] = []

    def start_job(self, key, name, work, tag=None):
        self.started.append((key, name, tag))
        return Job(name, work, tag)


def test_compare_plan_lists_the_missing_maps_starts_quick_work_and_then_has_nothing_to_do(model, monkeypatch):
    from tame_core.studio import costs

    monkeypatch.setattr(costs, "forward_seconds", lambda model, input_hw=None, batch=8: 0.05)  # counted passes, not this machine's speed
    ws = Workspace()
    subject = ws.subject(model, load_sample("chelsea"), 281)
    plan = compare_plan(ws, subject, ["tame", "gradcam"])
    assert plan.job is None and plan.todo == ["tame", "gradcam"] and plan.records == ()
    expected = compare_estimate(subject, ["tame", "gradcam"], ws.results)
    # every timed run: TAME's warm-up and 5 runs, then Grad-CAM's warm-up and 5 rounds, each beside a TAME run
    assert (plan.estimate.forwards, plan.estimate.backwards) == (expected.forwards, expected.backwards) == (18, 6)
    assert plan.estimate.seconds == pytest.approx(expected.seconds) == pytest.approx(0.05 * (18 + 2 * 6))
    assert plan.estimate.seconds <= AUTO_START_SECONDS and plan.starts_at_once  # a second and a half: no click needed
    job = plan.start()
    assert plan.job is job and job.name.startswith("Comparing methods (estimated ") and job.tag == subject.key()
    assert job.wait(300) and job.state is JobState.DONE, job.error
    again = compare_plan(ws, subject, ["tame", "gradcam"])
    assert again.job is job and again.todo == [] and again.estimate is None and not again.starts_at_once
    assert [r.method for r in again.records if isinstance(r, MethodMap)] == ["tame", "gradcam"]
    with pytest.raises(ValueError, match="nothing to start"):
        again.start()
    more = compare_plan(ws, subject, ["tame", "gradcam", "gradcam++"])
    assert more.todo == ["gradcam++"] and more.job is job and more.starts_at_once  # the last run finished


def test_curves_plan_keys_the_job_by_steps_and_fills(model):
    ws = Workspace()
    subject = ws.subject(model, load_sample("chelsea"), 281)
    plan = curves_plan(ws, subject, ["tame"], 4, FILLS)
    assert plan.todo == ["tame"] and plan.tag == (subject.key(), 4, FILLS)
    assert plan.estimate.forwards == curves_estimate(subject, ["tame"], 4, ws.results, FILLS).forwards
    job = plan.start()
    assert job.name.startswith("Deletion and insertion curves (estimated ") and job.wait(300), job.error
    assert curves_plan(ws, subject, ["tame"], 4, FILLS).todo == []
    other = curves_plan(ws, subject, ["tame", "gradcam"], 10, FILLS)
    assert other.job is None and other.todo == ["tame", "gradcam"]  # other steps: another job, other curves
    assert other.estimate.forwards == 1 + 2 * 2 * 11  # TAME's map is cached: Grad-CAM's map, then 2 curves × 11 points each
    assert curves_estimate(subject, ["tame", "gradcam"], 10, None, FILLS).forwards == 2 + 2 * 2 * 11  # without the cache


def test_a_stopped_or_failed_run_waits_for_a_click_however_quick():
    def wait_for_stop(context):
        context.stop_event.wait(30)
        context.check_stop()

    stopped = Job("compare", wait_for_stop).start()
    stopped.stop()
    assert stopped.wait(30) and stopped.state is JobState.STOPPED
    quick = Estimate(1, 0, 0.1)
    plan = JobPlan(Workspace(), "compare", None, "Comparing methods", stopped, ["tame"], quick, lambda context: None)
    assert not plan.starts_at_once
    plan.job = None
    assert plan.starts_at_once
    plan.estimate = Estimate(10_000, 0, AUTO_START_SECONDS + 1)
    assert not plan.starts_at_once  # long work: the user is asked, with the estimate on the button


def test_branches_measure_every_combination_of_a_small_head_and_the_current_mask_of_a_big_one(model):
    tag, masks = masks_to_measure(model, "abc", 281, (True, False, True))
    assert tag == (model.key, "abc", 281, None)  # one job serves every toggle
    assert len(masks) == 7 and masks[0] == (True, True, True) and (True, False, True) in masks
    tag, masks = masks_to_measure(model, "abc", 281, (True, False, True, True, False))
    assert tag == (model.key, "abc", 281, (True, False, True, True, False)) and masks == [(True, False, True, True, False)]


def test_a_flat_map_is_said_to_be_flat():
    assert flat_map_warning([0.5, 0.5], (False, False)) == "All branches are off: the map is the fuser's bias alone, flat."
    warning = flat_map_warning([0.03, 0.97], (True, False))
    assert warning.startswith("The branches that are on move only 3% of this map: it is nearly flat")
    assert NEARLY_FLAT == 0.05 and flat_map_warning([0.05, 0.95], (True, False)) is None
    assert flat_map_warning([0.03, 0.97], (True, True)) is None


def test_a_fresh_evaluation_forgets_the_stopped_run_and_a_resumed_one_keeps_it(tmp_path, model):
    config = EvaluationConfig(data=str(noise_folder(tmp_path / "images", 3)), methods=("tame",), steps=4)
    assert image_total(config) == 3
    expected = evaluation_estimate(model, ("tame",), 3, 4, dict(config.method_limits))
    assert evaluation_cost(model, config, 3) == expected
    states = tmp_path / "states"
    state = state_path(config, model.choice, states)
    for fresh in (False, True):
        states.mkdir(exist_ok=True)
        state.write_text("{}")
        thumbnail_folder(state).mkdir(parents=True, exist_ok=True)
        ws = StartRecorder()
        start_evaluation(ws, model, config, states, expected, fresh=fresh)
        assert ws.started == [("evaluate", f"Evaluating (estimated {expected.duration})", state)]
        assert state.exists() is (not fresh) and thumbnail_folder(state).exists() is (not fresh)
    assert not can_resume_evaluation(config, model.choice, states)
    assert evaluation_thumbnails(Job("evaluate", lambda context: None, state)) == thumbnail_folder(state)
    assert evaluation_thumbnails(Job("compare", lambda context: None, ("model", "digest"))) is None


def test_the_train_page_run_saves_in_the_session_and_resume_or_restart_leaves_its_config_alone(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "a.png")
    config = training_config(
        data, "my_head", tmp_path / "heads", "efficientnet_lite0", ["blocks.4"], "tame", "cpu",
        recipe="little-data", epochs=2, batch_size=4, lr=0.01, split="all",
    )
    assert config.out == tmp_path / "heads" / "my_head.safetensors" and config.data == [data]
    assert (config.checkpoint_every, config.progress, config.layers, config.epochs) == (CHECKPOINT_EVERY, False, ["blocks.4"], 2)
    assert (config.resume, config.overwrite) == (False, False)
    resumed, restarted = run_config(config, resume=True), run_config(config, resume=False)
    assert (resumed.resume, resumed.overwrite, restarted.resume, restarted.overwrite) == (True, False, False, True)
    assert (config.resume, config.overwrite) == (False, False) and resumed.out == config.out and resumed.lr == 0.01


def test_the_train_page_reads_resumes_previews_and_the_planned_steps_from_the_records():
    records = [
        {"event": "start", "total_steps": 40},
        {"step": 10, "loss": 1.0},
        {"event": "preview", "step": 10, "overlays": ["a"]},
        {"event": "resume", "step": 10},
        {"event": "preview", "step": 20, "overlays": ["b", "c"]},
        "not a dict",
    ]
    assert resumed_steps(records) == [10]
    assert latest_preview(records) == {"event": "preview", "step": 20, "overlays": ["b", "c"]}
    assert total_steps(records) == 40
    assert (resumed_steps([]), latest_preview([]), total_steps([{"step": 1}])) == ([], None, None)


def test_the_train_page_estimate_counts_the_folders_images_and_epochs_on_the_sidebar_model(tmp_path, model, monkeypatch):
    from dataclasses import replace

    from tame_core.studio import costs, training_cost

    monkeypatch.setattr(costs, "forward_seconds", lambda model, input_hw=None, batch=8: 0.05)  # counted passes, not this machine's speed

    data = tmp_path / "images"
    data.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / f"{name}.png")
    backbone = model.explainer.backbone.name
    config = training_config(data, "h", tmp_path / "heads", backbone, model.layers[:1], "tame", "cpu",
                             recipe="little-data", epochs=2, batch_size=4, lr=0.01, split="all")
    estimate = training_cost(model, config)
    assert (estimate.forwards, estimate.backwards) == (3 * 2 * 2, 3 * 2)
    assert estimate.seconds == pytest.approx(0.05 * (12 + costs.BACKWARD_COST * 6))
    destroying = training_cost(model, replace(config, loss=replace(config.loss, destroy=1.0)))
    assert (destroying.forwards, destroying.backwards) == (18, 12)
    assert training_cost(None, config) is None  # no model loaded: no forward time to go by
    assert training_cost(model, replace(config, backbone="resnet50")) is None  # another backbone: unknown until it runs
