"""The work behind the Branches, Curves, Compare and Train pages (tame_core.studio), without Streamlit."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core.maps import resize_maps
from tame_core.metrics import average_drop_increase
from tame_core.metrics.curves import baseline_images, deletion_insertion
from tame_core.studio import Job, JobState, LoadedModel, ModelChoice, Workspace, load_sample
from tame_core.studio.ablation import ablation_rows, combinations
from tame_core.evaluation import EvaluationConfig
from tame_core.studio.evaluation import column_title, evaluation_work, state_path
from tame_core.studio.evaluation import can_resume as can_resume_evaluation
from tame_core.methods import list_methods
from tame_core.studio import costs
from tame_core.studio.ablation import SEES, branch_terms
from tame_core.studio import (
    CurvePoint,
    MethodMap,
    ResultCache,
    auc_direction,
    auc_rows,
    auc_table,
    compare_estimate,
    compare_methods,
    cost_rows,
    curve_points,
    curves_estimate,
    curves_so_far,
    maps_so_far,
    missing,
    perturbed_image,
)
from tame_core.studio.plots import curve_figure, loss_figure
from tame_core.studio.training import (
    TrainingPreview,
    can_resume,
    extract_zip,
    logged_steps,
    loss_history,
    output_path,
    run_outcome,
    train_work,
)
from tame_core.training import TrainConfig, TrainingError


@pytest.fixture(scope="module")
def model(explainer, random_head_path) -> LoadedModel:
    return LoadedModel(ModelChoice(head=str(random_head_path)), explainer)


@pytest.fixture(scope="module")
def chelsea(model):
    image = load_sample("chelsea")
    return image, Workspace().view(model, image, 281)  # tabby


@pytest.fixture(scope="module")
def subject(model):
    return Workspace().subject(model, load_sample("chelsea"), 281)


def run(work) -> Job:
    job = Job("test", work).start()
    assert job.wait(300)
    assert job.state is JobState.DONE, job.error
    return job


# --- branches ---------------------------------------------------------------------------------------
def test_combinations_cover_every_nonempty_mask_all_branches_first():
    masks = combinations(3)
    assert len(masks) == 7 and len(set(masks)) == 7
    assert masks[0] == (True, True, True) and (False, False, False) not in masks
    assert [sum(m) for m in masks] == [3, 2, 2, 2, 1, 1, 1]
    assert combinations(6, (True, False) * 3) == [(True, False) * 3]


def test_ablation_rows_match_average_drop_increase_on_each_mask(model, chelsea):
    _, explanation = chelsea
    masks = [(True, True, True), (False, False, True)]
    rows = ablation_rows(model, explanation, masks)
    assert [row.mask for row in rows] == masks
    for row in rows:
        maps = explanation.with_branches(row.mask).maps[:, 0]
        direct = average_drop_increase(model.explainer.backbone, explanation.inputs, maps, explanation.classes[:, 0])
        assert row.scores == pytest.approx(direct.summary(), abs=1e-4)
        assert row.masked_probability == pytest.approx(float(direct.masked[0, 0]), abs=1e-6)
        assert set(row.scores) == {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15"}
        # one picture: IC is 0 or 100 and AD 0 exactly when the kept part scores at least the whole picture
        assert row.clean_probability == pytest.approx(float(explanation.class_probs[0, 0]), abs=1e-6)
        assert set(row.kept) == {100, 50, 15}
        for kept, probability in row.kept.items():
            increased = probability > row.clean_probability
            assert row.scores[f"IC{kept}"] == (100.0 if increased else 0.0)
            drop = max(0.0, row.clean_probability - probability) / row.clean_probability * 100
            assert row.scores[f"AD{kept}"] == pytest.approx(drop, abs=1e-3)
    assert rows[0].scores != rows[1].scores  # switching branches off changes what the map keeps


def test_branch_terms_are_signed_share_one_scale_and_add_up_to_the_map(model, chelsea):
    _, explanation = chelsea
    terms = branch_terms(explanation)
    assert terms.terms.shape == (3, *explanation.inputs.shape[-2:])
    assert terms.terms.min() < 0 < terms.terms.max()  # signed, not min-max scaled per branch
    assert terms.scale == pytest.approx(float(np.abs(terms.terms).max()))
    assert sum(terms.share()) == pytest.approx(1.0) and all(0 <= s <= 1 for s in terms.share())
    head = model.explainer.head
    with torch.no_grad():
        raw = head.fuse(explanation.branch_features, explanation.classes)[0, 0]  # the logit map the terms add up to
        expected = resize_maps(raw - head.fuser.bias[281], explanation.inputs.shape[-2:]).numpy()
    np.testing.assert_allclose(terms.terms.sum(axis=0), expected, atol=1e-4)


def test_branches_are_named_by_what_they_see_and_read_plainly():
    from tame_core.studio.ablation import AblationRow, BranchTerms, branch_names, plain_reading
    from tame_core.studio.render import delta_text

    names = branch_names(["blocks.2", "blocks.4", "blocks.6"], [(28, 28), (14, 14), (7, 7)])
    assert names == ["fine detail (blocks.2, 28×28)", "parts (blocks.4, 14×14)", "whole object (blocks.6, 7×7)"]
    assert branch_names(["bn2", "blocks.4"], [(7, 7), (14, 14)]) == ["whole object (bn2, 7×7)", "fine detail (blocks.4, 14×14)"]
    assert [n.split(" (")[0] for n in branch_names(["a", "b", "c"], [(14, 14)] * 3)] == list(SEES)  # ViT: by depth
    row = AblationRow((True,), 0.30, {}, 0.60, {100: 0.30, 50: 0.45, 15: 0.66})
    assert plain_reading(row, "tabby").startswith(
        "Keeping only the map's area, the model's confidence in tabby drops by 50% (60.0% → 30.0%); "
        "keeping only the map's top 15 % of pixels, it rises by 10% (60.0% → 66.0%)."
    )
    assert delta_text(0.04) is None and delta_text(-0.0) is None and delta_text(1.25, 1, " pts") == "+1.2 pts"
    terms = BranchTerms(np.stack([np.full((2, 2), 4.0), np.full((2, 2), -0.1)]).astype(np.float32))
    assert terms.own_scales() == pytest.approx([4.0, 0.1])  # the small one drawn on its own scale: visible


# --- curves and comparison --------------------------------------------------------------------------
def test_streamed_curves_match_the_batched_metric(subject):
    explanation = subject.explanation
    job = run(lambda context: curve_points(subject, ["tame"], context, steps=6))  # RISE's fills, as the metric's default
    records = job.records
    maps = [r for r in records if isinstance(r, MethodMap)]
    points = [r for r in records if isinstance(r, CurvePoint)]
    assert [m.method for m in maps] == ["tame"] and maps[0].forward_passes == 1
    assert len(points) == 2 * 7 and points[0].fraction == 0.0 and points[6].fraction == 1.0
    batched = deletion_insertion(
        subject.model.explainer.backbone, explanation.inputs, maps[0].saliency[None], explanation.classes[:, 0], steps=6
    )
    torch.testing.assert_close(torch.tensor([p.probability for p in points[:7]]), batched.deletion[0], atol=1e-5, rtol=0)
    (row,) = auc_rows(points)
    assert row["deletion_auc"] == pytest.approx(float(batched.deletion_auc[0]), abs=1e-5)
    assert row["insertion_auc"] == pytest.approx(float(batched.insertion_auc[0]), abs=1e-5)
    assert job.result["tame"].deletion.shape == (1, 7)
    half = auc_rows(points[:10])[0]  # insertion only part drawn: no AUC yet
    assert half["deletion_auc"] is not None and half["insertion_auc"] is None
    assert auc_direction("deletion") == "lower is better" and auc_direction("insertion") == "higher is better"
    figure = curve_figure(points[:10], "insertion", ["tame"])
    assert len(figure.data) == 1 and len(figure.data[0].x) == 3
    shown = auc_table(points[:10] + [CurvePoint("gradcam", "deletion", 0.0, 0.9)], steps=6)
    assert shown[0]["deletion AUC (lower is better)"] == f"{row['deletion_auc']:.3f}"
    assert shown[0]["insertion AUC (higher is better)"] == "– (still drawing: 3 of 7 points)"  # no None, a reason
    assert shown[1]["insertion AUC (higher is better)"] == "– (waiting for its turn)"
    assert tuple(curve_figure([], "deletion", ["tame"]).layout.yaxis.range) == (0, 1)  # a probability, before any point


def test_a_baseline_added_to_the_curves_is_computed_alone(subject):
    cache = ResultCache()
    first = run(lambda context: curve_points(subject, ["tame"], context, steps=4, cache=cache))
    tame_points = [r for r in first.records if isinstance(r, CurvePoint)]
    assert missing(subject, ["tame", "gradcam"], cache, 4, "deletion=mean,insertion=blur") == ["gradcam"]  # the default, spelt out
    second = run(lambda context: curve_points(subject, ["gradcam"], context, steps=4, cache=cache))
    assert {r.method for r in second.records if isinstance(r, (CurvePoint, MethodMap))} == {"gradcam"}  # TAME untouched
    drawn = curves_so_far(subject, ["tame", "gradcam"], 4, None, cache)
    assert [p for p in drawn if p.method == "tame"] == tame_points and len(drawn) == 2 * 2 * 5
    assert missing(subject, ["tame", "gradcam"], cache, 4, {"deletion": "mean"}) == []
    assert missing(subject, ["tame", "gradcam"], cache, 10, None) == ["tame", "gradcam"]  # other settings: other curves
    assert missing(subject, ["tame", "gradcam"], cache, 4, "blur") == ["tame", "gradcam"]  # other fills: other curves
    # the maps are shared with Compare: comparing TAME and Grad-CAM now computes nothing
    third = run(lambda context: compare_methods(subject, ["tame", "gradcam"], context, cache))
    assert [r.method for r in third.records] == ["tame", "gradcam"] and third.records[0] is cache.get(subject.key("map", "tame"))
    assert [m.method for m in maps_so_far(subject, ["gradcam", "tame"], cache)] == ["gradcam", "tame"]
    assert curves_estimate(subject, ["tame", "gradcam"], 4, cache).forwards == 0
    estimate = curves_estimate(subject, ["gradcam++"], 4, cache)
    assert (estimate.forwards, estimate.backwards) == (1 + 2 * 5, 1) and estimate.seconds > 0


def test_a_stale_forward_time_is_measured_again_in_the_background(model, monkeypatch):
    """The caller never waits for a refresh: it gets the last figure, and the next call the new one."""
    costs.forward_seconds(model)
    measured = iter([0.5, 0.25])
    started = threading.Event()

    def slow_measure(model, batch, size, budget):
        assert budget == costs.REFRESH_SAMPLE_S  # a refresh samples longer than the first measurement
        started.set()
        return costs.Sample(next(measured))  # a wall time, as on an accelerator

    monkeypatch.setattr(costs, "_measure", slow_measure)
    key = ("forward", model.key, tuple(model.explainer.backbone.preprocess.input_size), 8)
    old, when = costs._MEASURED[key]
    assert costs.forward_seconds(model) == old and not started.is_set()  # fresh: not measured again
    costs._MEASURED[key] = (old, when - costs.FORWARD_MAX_AGE_S - 1)
    assert costs.forward_seconds(model) == old  # stale: the old figure at once, a refresh started
    assert started.wait(10)
    deadline = time.monotonic() + 10
    while key in costs._REFRESHING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert costs.forward_seconds(model) == 0.5  # the refreshed figure
    costs._MEASURED[key] = (old, when)


def test_figures_refreshed_together_are_measured_one_at_a_time(monkeypatch):
    """Side by side, two measurements slow each other down: refreshes asked for at once run in turn."""
    running, most, done = [0], [0], threading.Event()
    lock = threading.Lock()

    def measure(budget: float) -> float:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return costs.Sample(1.0)

    keys = [("test-sampling", n) for n in range(3)]
    for key in keys:
        costs._MEASURED[key] = (0.5, time.monotonic() - costs.FORWARD_MAX_AGE_S - 1)
    try:
        assert [costs._timed(key, measure) for key in keys] == [0.5, 0.5, 0.5]  # the old figures at once
        deadline = time.monotonic() + 10
        while any(key in costs._REFRESHING for key in keys) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [costs._MEASURED[key][0] for key in keys] == [1.0, 1.0, 1.0] and most[0] == 1
    finally:
        for key in keys:
            costs._MEASURED.pop(key, None)


def test_the_forward_time_is_the_cpu_cost_of_batches_scaled_by_the_threads_competing(model, monkeypatch):
    """Batches run until the sample's wall time is spent (0.05 + 0.2 + 0.2 s passes 0.3 s after three;
    0.01 x 3 + 0.5 needs a fourth). The figure is their mean CPU time per image, times the share of the
    cores sustained work will get: alone, the CPU time itself; with two neighbours burning (3 threads
    runnable on 2 cores, ours one), 1.5 times it, however the wall times of the sample came out."""
    batches = iter([(0.05, 0.04), (0.2, 0.1), (0.2, 0.1), (0.01, 0.01), (0.01, 0.01), (0.01, 0.01), (0.5, 0.37)])
    clock = {"wall": 0.0, "cpu": 0.0, "batches": 0, "wall_pending": 0.0, "cpu_pending": 0.0}
    backbone = model.explainer.backbone
    real_forward = type(backbone).__call__

    def forward(self, images):
        if images.shape[0] == 4:  # the timed batches (the warm-up is one image)
            clock["batches"] += 1
            clock["wall_pending"], clock["cpu_pending"] = next(batches)
        return real_forward(self, images)

    def advance(which: str) -> float:
        clock[which] += clock[f"{which}_pending"]
        clock[f"{which}_pending"] = 0.0
        return clock[which]

    runnable = {"now": 3}
    monkeypatch.setattr(type(backbone), "__call__", forward)
    monkeypatch.setattr(costs.time, "perf_counter", lambda: advance("wall"))
    monkeypatch.setattr(costs.time, "thread_time", lambda: advance("cpu"))
    monkeypatch.setattr(costs, "runnable_threads", lambda: runnable["now"])
    monkeypatch.setattr(costs.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(costs.torch, "get_num_threads", lambda: 1)
    busy = costs._measure(model, 4, (32, 32), 0.3)
    assert clock["batches"] == 3 and busy.cost == pytest.approx(0.24 / 3 / 4) and busy.contention == 1.5
    runnable["now"] = 1  # only the sampling thread
    clock["batches"] = 0
    quiet = costs._measure(model, 4, (32, 32), 0.3)
    assert quiet.cost == pytest.approx(0.4 / 4 / 4) and quiet.contention == 1.0 and clock["batches"] == 4


def test_a_cpu_figure_is_the_least_cpu_cost_seen_times_the_contention_now():
    """Beside neighbours the same forward's CPU time came out up to 1.4 times its quiet cost; times the
    contention that counts them twice. The figure keeps the least cost sampled and the latest contention."""
    key = ("test-least",)
    try:
        with costs._MEASURING:
            assert costs._figure(key, costs.Sample(0.04, 1.0)) == pytest.approx(0.04)  # quiet
            assert costs._figure(key, costs.Sample(0.056, 1.5)) == pytest.approx(0.06)  # busy: 0.04 x 1.5
            assert costs._figure(key, costs.Sample(0.03, 1.5)) == pytest.approx(0.045)  # a lower cost found
            assert costs._figure(key, costs.Sample(0.05, 1.0)) == pytest.approx(0.03)  # quiet again
            assert costs._figure(key, costs.Sample(0.5)) == 0.5  # an accelerator's wall time is the figure
    finally:
        costs._LEAST_CPU.pop(key, None)


def test_cpu_contention_is_the_fair_share_of_the_cores():
    assert costs.cpu_contention(1, threads=1, cores=2) == 1.0  # alone
    assert costs.cpu_contention(2, threads=1, cores=2) == 1.0  # one neighbour: a core each
    assert costs.cpu_contention(3, threads=1, cores=2) == 1.5  # two neighbours: two thirds of a core each
    assert costs.cpu_contention(5, threads=2, cores=2) == 3.0  # four neighbours and a team of two
    assert costs.cpu_contention(9.5, threads=4, cores=16) == 1.0
    with pytest.raises(ValueError, match="threads and cores must be at least 1, got 0 and 2"):
        costs.cpu_contention(3, threads=0, cores=2)
    seen = costs.runnable_threads()
    assert seen is None or seen >= 1  # the caller is running while it reads


def test_costs_are_estimated_from_stated_passes_and_measured_forwards(model, subject):
    per_forward = costs.forward_seconds(model)
    assert 0 < per_forward < 5 and costs.forward_seconds(model) == per_forward  # measured once
    rise = costs.method_estimate(model, "rise")
    assert (rise.forwards, rise.backwards) == (4000, 0)
    assert rise.seconds == pytest.approx(4000 * costs.forward_seconds(model, None, 4))  # at RISE's batch of masks
    scorecam = costs.method_estimate(model, "scorecam")
    assert scorecam.forwards == 1 + model.explainer.head.channels[-1]
    assert scorecam.seconds == pytest.approx(scorecam.forwards * costs.forward_seconds(model, None, 4))  # at its batch
    # every run Compare's timing makes: TAME's warm-up and 5 runs; Score-CAM once, between 2 TAME runs a side
    assert compare_estimate(subject, ["tame", "scorecam"]).forwards == (1 + 5) + (scorecam.forwards + 5)
    gradcam = compare_estimate(subject, ["gradcam"])  # warm-up and 5 rounds, each beside a TAME run
    assert (gradcam.forwards, gradcam.backwards) == (6 * 1 + 6 * 1, 6 * 1)
    evaluation = costs.evaluation_estimate(model, ["tame", "gradcam"], images=10, steps=4, method_limits={"gradcam": 5})
    metric = 3 + 14 + 2 * 5  # AD/IC levels, ROAD orders x levels, curve points
    assert evaluation.forwards == 10 + 10 * (1 + metric) + 5 * (1 + metric) and evaluation.backwards == 5
    per_imputation = costs.imputation_seconds(model)  # ROAD fills 14 pictures per image and method
    assert 0 < per_imputation < 5 and evaluation.imputations == 14 * (10 + 5)
    passes = evaluation.forwards + costs.BACKWARD_COST * evaluation.backwards
    assert evaluation.seconds == pytest.approx(passes * per_forward + 14 * 15 * per_imputation)
    without_road = costs.evaluation_estimate(model, ["tame"], images=10, steps=4, groups=("adic", "curves"))
    assert without_road.imputations == 0 and without_road.forwards == 10 + 10 * (1 + 3 + 2 * 5)
    assert "+ 210 imputed pictures" in evaluation.text()
    assert costs.duration_text(0.4) == "under a second" and costs.duration_text(42) == "≈ 42 s"
    assert costs.duration_text(9 * 60) == "≈ 9 min" and costs.duration_text(2 * 3600) == "≈ 2.0 h"
    assert rise.text().endswith("(4,000 forward passes)")


def test_timings_that_mean_nothing_are_called_noisy():
    assert costs.timing_note(0.02) == "too short to time from one run"
    assert costs.timing_note(3.5) is None  # one long run: fine
    assert costs.timing_note(0.02, (0.020, 0.021, 0.019, 0.020, 0.022)) is None  # steady repeats
    assert costs.timing_note(0.02, (0.010, 0.040, 0.012, 0.060, 0.020)).startswith("noisy")
    rows = costs.with_relative_times(
        [{"method": "tame", "ms_per_image": 12.0, "images": 200}, {"method": "gradcam", "ms_per_image": 36.0, "images": 200},
         {"method": "rise", "ms_per_image": 30.0, "images": 2}]
    )
    assert [r["× TAME time"] for r in rows] == [1.0, 3.0, None]
    assert rows[2]["ms_per_image"] is None and rows[2]["timing"] == "too short to time from one run"

def test_perturbed_images_run_from_the_picture_to_the_baseline(model, chelsea):
    _, explanation = chelsea
    saliency = explanation.maps[0, 0]
    original = (explanation.inputs[0].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
    mean = explanation.explainer.backbone.mean
    blurred = (baseline_images(explanation.inputs, "blur", mean)[0] * 255 + 0.5).byte().permute(1, 2, 0).numpy()
    assert np.array_equal(perturbed_image(explanation, saliency, "deletion", 0, 10), original)
    grey = (explanation.explainer.backbone.mean[0, :, 0, 0] * 255 + 0.5).byte().numpy()  # the classifier's mean colour
    deleted = perturbed_image(explanation, saliency, "deletion", 10, 10)  # RISE's deletion: to the mean colour
    assert np.array_equal(deleted, np.broadcast_to(grey, deleted.shape))
    assert np.array_equal(perturbed_image(explanation, saliency, "deletion", 10, 10, "blur"), blurred)
    assert np.array_equal(perturbed_image(explanation, saliency, "insertion", 0, 10), blurred)
    halfway = perturbed_image(explanation, saliency, "deletion", 5, 10, "black")
    assert 0.45 < (halfway.sum(axis=2) == 0).mean() < 0.55


def test_compare_records_each_method_with_its_warm_cost(subject):
    assert list_methods()[0] == "tame" and "gradcam" in list_methods()
    job = run(lambda context: compare_methods(subject, ["tame", "gradcam"], context))
    tame, gradcam = job.result
    assert [r.method for r in job.records] == ["tame", "gradcam"]
    assert (tame.forward_passes, tame.backward_passes) == (1, 0) and (gradcam.forward_passes, gradcam.backward_passes) == (1, 1)
    assert len(tame.repeats) >= 5 and tame.milliseconds == pytest.approx(float(np.median(tame.repeats)) * 1000)
    assert job.forwards >= 2 * (1 + 5)  # a warm-up and at least five timed runs each
    for result in job.result:
        assert result.saliency.shape == subject.explanation.inputs.shape[-2:]
        assert 0.0 <= float(result.saliency.min()) and float(result.saliency.max()) <= 1.0
        assert result.milliseconds > 0
    rows = cost_rows(job.result)
    assert [r["method"] for r in rows] == ["tame", "gradcam"] and rows[0]["forward passes"] == 1
    assert list(rows[0])[:2] == ["method", "× TAME time"]  # the ratio first: it survives a busy machine
    assert rows[0]["× TAME time"] == 1.0 and 0 < rows[1]["× TAME time"] < 100
    assert rows[1]["timing"].startswith("median of ") and "in turns with TAME" in rows[1]["timing"]
    assert job.forwards >= 2 * (1 + 5) + 1 + 5  # gradcam's rounds each ran TAME too


@pytest.mark.slow
def test_compare_costs_are_numbers_while_another_process_keeps_both_cores_busy(subject):
    import subprocess
    import sys

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for _ in range(10):
            rows = cost_rows(run(lambda context: compare_methods(subject, ["tame", "gradcam"], context)).result)
            for row in rows:  # present, finite and positive: not timed
                assert 0 < row["× TAME time"] < float("inf") and 0 < row["ms"] < float("inf"), row
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def test_methods_that_give_the_same_map_are_named_together():
    from tame_core.studio import coinciding, coinciding_text

    ramp = torch.linspace(0, 1, 16).reshape(4, 4)
    maps = [MethodMap(m, ramp + shift, 1.0, 1, 1) for m, shift in (("tame", 0.3), ("gradcam", 0.0), ("xgradcam", 1e-5), ("hirescam", 0.0))]
    assert coinciding(maps) == [["gradcam", "xgradcam", "hirescam"]]
    assert coinciding_text(coinciding(maps)) == "gradcam, xgradcam and hirescam give the same map here: their curves lie on top of each other."
    assert coinciding(maps[:2]) == [] and coinciding_text([]) is None


def test_compare_costs_are_numbers_even_when_the_machine_was_busy():
    scattered = (0.010, 0.040, 0.012, 0.060, 0.020)
    maps = [MethodMap("tame", torch.zeros(4, 4), 20.0, 1, 0, scattered), MethodMap("gradcam", torch.zeros(4, 4), 50.0, 1, 1, scattered, 2.4)]
    rows = cost_rows(maps)
    assert [(r["× TAME time"], r["ms"]) for r in rows] == [(1.0, 20.0), (2.4, 50.0)]  # no None
    assert rows[1]["timing"] == "median of 5 warm runs, in turns with TAME; noisy: the machine was busy while it was timed"


def test_an_unknown_method_fails_the_job_with_one_line(subject):
    job = Job("bad", lambda context: compare_methods(subject, ["tame", "gradcum"], context)).start()
    assert job.wait(60) and job.state is JobState.FAILED
    assert "unknown method 'gradcum'" in job.error and job.records == []


# --- training ---------------------------------------------------------------------------------------
def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zips_unpack_their_images_and_bad_ones_are_refused(tmp_path):
    folder = extract_zip(zipped({"a/one.png": png(0), "two.PNG": png(1), "notes.txt": b"x"}), tmp_path / "ok")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["a/one.png", "two.PNG"]
    with pytest.raises(TrainingError, match=r"^up\.zip: not a zip file$"):
        extract_zip(b"PK but not really", tmp_path / "bad", "up.zip")
    with pytest.raises(TrainingError, match="no images inside"):
        extract_zip(zipped({"readme.md": b"hi"}), tmp_path / "empty")
    with pytest.raises(TrainingError, match="would unpack outside its folder"):
        extract_zip(zipped({"../../evil.png": png(2)}), tmp_path / "slip")
    assert not (tmp_path / "evil.png").exists()


def test_output_names_are_checked(tmp_path):
    assert output_path("my_head", tmp_path) == tmp_path / "my_head.safetensors"
    assert output_path("v2.safetensors", tmp_path) == tmp_path / "v2.safetensors"
    with pytest.raises(TrainingError, match="is the bundled head's"):
        output_path("efficientnet_lite0", tmp_path)
    with pytest.raises(TrainingError, match="use letters, digits"):
        output_path("../escape", tmp_path)


@pytest.mark.slow
def test_training_job_streams_losses_previews_and_resumes(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    for index in range(4):
        (data / f"{index}.png").write_bytes(png(index, 96))
    config = TrainConfig(
        data=data, out=tmp_path / "head.safetensors", epochs=2, batch_size=2, checkpoint_every=1, progress=False,
        device="cpu", augment="none",
    )
    preview = TrainingPreview.from_folder(config, count=2)
    job = Job("train", lambda context: train_work(config, context, preview)).start()
    deadline = time.monotonic() + 300
    while job.running and time.monotonic() < deadline:
        if any("loss" in record for record in job.records):
            job.stop()  # the trainer saves a resumable state and returns
            break
        time.sleep(0.05)
    assert job.wait(300) and job.state is JobState.STOPPED, job.error
    steps = [r for r in job.records if "loss" in r]
    assert 1 <= len(steps) < 4 and {"ce", "area", "tv", "lr"} <= set(steps[0])
    previews = [r for r in job.records if r.get("event") == "preview"]
    assert previews and len(previews[-1]["overlays"]) == 2 and previews[-1]["overlays"][0].shape == (224, 224, 3)
    assert can_resume(config)

    assert [r["phase"] for r in job.records if r.get("event") == "phase"][:2] == [
        "loading the backbone (efficientnet_lite0)",
        "checking that every image can be read",
    ]  # reported before the first step, from the first second
    assert run_outcome(job.records)["event"] == "stopped" and run_outcome(job.records)["step"] == len(steps)
    assert [r["step"] for r in logged_steps(config.log_path, 99)] == list(range(1, len(steps) + 1))

    config.resume = True
    resumed = run(lambda context: train_work(config, context))
    records = resumed.records
    replayed = [r for r in records[: records.index(next(r for r in records if r.get("event") == "resume"))] if "loss" in r]
    assert [r["step"] for r in replayed] == list(range(1, len(steps) + 1))  # steps 1..n from the log, first
    assert [r["loss"] for r in replayed] == [r["loss"] for r in steps]
    history = loss_history(records)
    assert [r["step"] for r in history] == [1, 2, 3, 4]  # the chart keeps every step across the resume
    assert resumed.result == config.out and config.out.is_file()
    assert run_outcome(records)["event"] == "done"
    assert not can_resume(config)  # finished: nothing left to resume
    figure = loss_figure(history, [len(steps)])
    assert figure.data[0].x == (1, 2, 3, 4) and figure.layout.shapes[0].x0 == len(steps)


def test_the_loss_chart_reads_plainly():
    from tame_core.studio.plots import LOSS_MEANINGS, LOSS_TERMS, log_ticks, loss_terms

    records = [{"step": 1, "loss": 4.0, "ce": 2.0, "area": 0.9, "tv": 0.03}, {"step": 2, "loss": 3.1, "ce": 1.5, "area": 0.8, "tv": 0.04}]
    assert log_ticks(records) == [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]  # 1-2-5, labelled in full
    figure = loss_figure(records)
    assert list(figure.layout.yaxis.ticktext) == ["0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"]
    assert [trace.name for trace in figure.data] == ["loss", "ce", "area", "tv"] == loss_terms(records)
    assert loss_terms([{**records[0], "destroy": 0.4}]) == ["loss", "ce", "area", "tv", "destroy"]  # only when on
    assert set(LOSS_MEANINGS) == set(LOSS_TERMS) and log_ticks([{"loss": 0.001}, {"loss": 500.0}])[:2] == [0.001, 0.01]


def test_a_resumed_run_replays_its_log_up_to_the_saved_step(tmp_path):
    log = tmp_path / "head.log.jsonl"
    lines = [{"event": "start", "total_steps": 9}, *({"step": s, "loss": float(s)} for s in range(1, 6)),
             {"event": "resume", "step": 3}, {"step": 4, "loss": 40.0}]
    log.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 5, "lo')  # a crash cut the last line
    assert [(r["step"], r["loss"]) for r in logged_steps(log, 4)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert logged_steps(tmp_path / "missing.jsonl", 4) == []


# --- evaluation -------------------------------------------------------------------------------------
def test_evaluation_job_reports_the_table_and_resumes_from_its_state(tmp_path, random_head_path, sample_images):
    data = tmp_path / "images"
    data.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(sample_images[name]).save(data / f"{name}.png")
    (data / "broken.png").write_bytes(b"not a png")
    choice = ModelChoice(head=str(random_head_path))
    config = EvaluationConfig(data=str(data), methods=("tame",), steps=5)
    first = run(lambda context: evaluation_work(choice, config, context, tmp_path / "state"))
    (row,) = first.result.rows()
    assert row["method"] == "tame" and row["images"] == 2 and row["forward_passes"] == 1
    assert {"AD100", "IC15", "MoRF", "LeRF", "deletion_auc", "insertion_auc", "ms_per_image"} <= set(row)
    assert len(first.result.skipped) == 1 and first.result.skipped[0].startswith(str(data / "broken.png"))
    assert state_path(config, choice, tmp_path / "state").is_file()
    assert state_path(config, choice, tmp_path / "state") != state_path(
        EvaluationConfig(str(data), ("tame",), steps=10), choice, tmp_path / "state"
    )
    again = run(lambda context: evaluation_work(choice, config, context, tmp_path / "state"))
    assert again.result.rows() == first.result.rows()  # everything came from the saved state
    assert column_title("AD100") == "AD100 ↓" and column_title("insertion_auc") == "insertion_auc ↑"


@pytest.mark.slow
def test_a_stopped_evaluation_resumes_where_it_stopped(tmp_path, random_head_path):
    data = tmp_path / "images"
    data.mkdir()
    for index in range(24):  # three batches of eight
        (data / f"{index:02d}.png").write_bytes(png(index))
    choice = ModelChoice(head=str(random_head_path))
    config = EvaluationConfig(data=str(data), methods=("tame",), steps=4)
    state = state_path(config, choice, tmp_path / "state")
    job = Job("evaluate", lambda context: evaluation_work(choice, config, context, tmp_path / "state")).start()
    deadline = time.monotonic() + 300
    while job.running and not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.stop()  # after the first saved batch
    assert job.wait(300) and job.state is JobState.STOPPED
    assert can_resume_evaluation(config, choice, tmp_path / "state")
    stopped_at = job.result.settings["images_done"]
    assert 8 <= stopped_at < 24
    resumed = run(lambda context: evaluation_work(choice, config, context, tmp_path / "state"))
    assert resumed.result.rows()[0]["images"] == 24 and not can_resume_evaluation(config, choice, tmp_path / "state")
