"""Dataset evaluation and ``tame evaluate``: rows per method with every metric, files, splits, resume."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tame_core.classes import imagenet_wnids
from tame_core.cli import main
from tame_core.errors import EvaluationError
from tame_core.evaluation import EvaluationConfig, evaluate, select_files
from tame_core.images import image_to_tensor, load_image
from tame_core.metrics import average_drop_increase
from noise_images import noise_folder

def run_evaluation(explainer, data, methods, limit=None, progress=None, *, state_path=None, stop=None, **config):
    """``evaluate`` with its config built from keywords, as most tests here vary one or two of them."""
    config = EvaluationConfig(data=data, methods=tuple(methods), limit=limit, **config)
    return evaluate(explainer, config, progress, state_path=state_path, stop=stop)


FAST = dict(steps=4, road_percentages=(20, 80), batch_size=2, method_options={"rise": {"masks": 8}})
PAPER_KEYS = {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "deletion_auc", "insertion_auc", "ms_per_image", "forward_passes"}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, sample_images):
    """Three CC0 photos, downscaled; the third under a held-out ImageNet class's WordNet id."""
    folder = tmp_path_factory.mktemp("photos")
    wnids = imagenet_wnids()
    names = [f"{wnids[0]}_chelsea.png", f"{wnids[1]}_coffee.png", f"{wnids[4]}_astronaut.png"]
    for name, key in zip(names, ("chelsea", "coffee", "astronaut")):
        picture = Image.fromarray(sample_images[key])
        picture.thumbnail((160, 160))
        picture.save(folder / name)
    return folder


def test_metric_groups_come_from_one_table():
    from tame_core.evaluation import METRIC_GROUPS, get_metric_group, list_metric_groups, metric_forwards

    assert list_metric_groups() == list(METRIC_GROUPS) == ["adic", "road", "curves"]
    # AD/IC: 3 kept fractions; ROAD: 2 orders x 2 levels; curves: 2 x (4 steps + 1)
    assert [metric_forwards([group], 4, (20, 50)) for group in METRIC_GROUPS] == [3, 4, 10]
    assert metric_forwards(METRIC_GROUPS, 4, (20, 50)) == 17
    assert get_metric_group("curves").forwards(4, (20, 50)) == 10
    with pytest.raises(EvaluationError, match="^unknown metric group 'roads'; choose from adic, road, curves$"):
        get_metric_group("roads")


def test_the_config_is_checked_when_made_before_any_model_loads():
    from tame_core.methods import list_methods
    from tame_core.metrics.curves import DEFAULT_STEPS

    config = EvaluationConfig(data=Path("photos"), methods=["tame"], method_options={"rise": {"masks": 5}}, method_limits={"rise": 2})
    assert (config.data, config.methods, config.steps) == ("photos", ("tame",), DEFAULT_STEPS)
    assert config.method_options == {"tame": {}} and config.method_limits == {}  # options of methods not run are dropped
    assert EvaluationConfig(data="photos").methods == tuple(list_methods())
    assert config.baseline == {"deletion": "mean", "insertion": "blur"}  # RISE's fills
    assert EvaluationConfig(data="photos", baseline="deletion=black").baseline == {"deletion": "black", "insertion": "blur"}
    unset = EvaluationConfig(data="photos", methods=("tame",), method_options=None, method_limits=None, metric_limits=None)
    assert (unset.method_options, unset.method_limits, unset.metric_limits) == ({"tame": {}}, {}, {})
    for wrong, message in [
        (dict(split="val"), "unknown split 'val'; choose one of all, train, heldout"),
        (dict(steps=0), "curve steps must be from 1 to 1000, got 0"),
        (dict(steps=100_000_000), "curve steps must be from 1 to 1000, got 100000000"),
        (dict(batch_size=0), "batch size must be at least 1, got 0"),
        (dict(baseline="grey"), "unknown fill 'grey'; choose one of mean, black, blur"),
        (dict(baseline="deletion=grey"), "unknown fill 'grey' for deletion; choose one of mean, black, blur"),
        (dict(baseline="sideways=blur"), "unknown curve 'sideways' in the baseline; choose from deletion, insertion"),
        (dict(methods=("gradcan",)), "unknown method 'gradcan'; did you mean gradcam"),
        (dict(method_options={"tame": {"masks": 3}}), "method 'tame' has no option 'masks'"),
        (dict(metric_limits={"speed": 3}), "unknown metric group 'speed' in the limits"),
    ]:
        with pytest.raises(EvaluationError, match=message):
            EvaluationConfig(data="photos", **wrong)


def test_evaluate_reports_every_metric_per_method(explainer, photo_dir):
    calls = []
    report = run_evaluation(explainer, photo_dir, ["tame", "gradcam", "rise"], limit=2, progress=lambda *a: calls.append(a), **FAST)
    assert list(report.methods) == ["tame", "gradcam", "rise"]
    for method, row in report.methods.items():
        assert PAPER_KEYS | {"MoRF", "LeRF", "MoRF20", "LeRF80", "MoRF_dprob"} <= set(row), method
        assert row["images"] == 2
        for name in ("AD100", "AD50", "AD15", "IC100", "IC50", "IC15", "MoRF", "LeRF"):
            assert 0.0 <= row[name] <= 100.0, (method, name)
        assert 0.0 <= row["deletion_auc"] <= 1.0 and 0.0 <= row["insertion_auc"] <= 1.0
        assert row["ms_per_image"] > 0
    assert report.methods["tame"]["forward_passes"] == 1 and report.methods["tame"]["backward_passes"] == 0
    assert report.methods["gradcam"]["backward_passes"] == 1
    assert report.methods["rise"]["forward_passes"] == 8
    assert calls[-1][:2] == (6, 6) and calls[-1][2] == "done"
    table = report.table().splitlines()
    assert table[0].split()[:3] == ["method", "AD100↓", "IC100↑"] and table[1].startswith("tame")
    assert report.settings["images"] == 2 and report.settings["classes"] == "top-1 prediction"


def test_batched_adic_equals_the_metric_on_the_whole_set(explainer, photo_dir):
    """Batches of 2 and 1, averaged per image, give the metric computed on all three images at once."""
    report = run_evaluation(explainer, photo_dir, ["tame"], metrics=["adic"], batch_size=2)
    row = report.methods["tame"]
    assert row["images"] == 3 and not {"MoRF", "deletion_auc"} & set(row)
    pictures = [image_to_tensor(load_image(path)) for path in sorted(photo_dir.iterdir())]
    explanation = explainer.explain(explainer.backbone.preprocess.batch(pictures, "crop"), geometry="input")
    direct = average_drop_increase(
        explainer.backbone, explanation.inputs, explanation.maps[:, 0], explanation.classes[:, 0]
    ).summary()
    assert set(direct) == {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15"}
    for name, value in direct.items():
        assert row[name] == pytest.approx(value, abs=1e-3), name
    # the area read beside them: the mean of the [0, 1] map at the input, in %
    assert row["area"] == pytest.approx(float(explanation.maps[:, 0].mean()) * 100, abs=1e-3)
    assert 0 < row["area"] < 100


def test_split_and_list_files_choose_the_images(photo_dir, tmp_path):
    assert [p.name for p in select_files(photo_dir, "heldout")] == [f"{imagenet_wnids()[4]}_astronaut.png"]
    assert len(select_files(photo_dir, "train")) == 2 and len(select_files(photo_dir, "all", limit=1)) == 1
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen\n{imagenet_wnids()[1]}_coffee.png\n")
    assert [p.name for p in select_files(photo_dir, list_file=listing)] == [f"{imagenet_wnids()[1]}_coffee.png"]
    listing.write_text("missing.png\n")
    with pytest.raises(EvaluationError, match="1 files named in .* do not exist"):
        select_files(photo_dir, list_file=listing)
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (32, 32)).save(plain / "cat.png")
    with pytest.raises(Exception, match="needs ImageNet WordNet ids"):
        select_files(plain, "heldout")


def test_an_interrupted_run_resumes_to_the_same_report(explainer, photo_dir, tmp_path):
    settings = dict(FAST, metrics=("adic", "road"), road_percentages=(50,))
    whole = run_evaluation(explainer, photo_dir, ["tame", "rise"], **settings)
    state = tmp_path / "state.json"
    stop = threading.Event()

    def stop_in_second_batch(done, total, message):
        if "images 3-3" in message and done > 2:  # TAME's forwards on the second batch have begun
            stop.set()

    partial = run_evaluation(explainer, photo_dir, ["tame", "rise"], progress=stop_in_second_batch, state_path=state, stop=stop, **settings)
    assert partial.methods["tame"]["images"] == 2 and partial.settings["images_done"] == 2  # the second batch is dropped whole
    assert partial.methods["rise"]["images"] == 2
    resumed = run_evaluation(explainer, photo_dir, ["tame", "rise"], state_path=state, **settings)
    assert resumed.methods["tame"]["images"] == 3
    for method in ("tame", "rise"):
        for name in ("AD100", "AD15", "IC50", "MoRF50", "LeRF", "MoRF_dprob"):
            assert resumed.methods[method][name] == pytest.approx(whole.methods[method][name], abs=1e-4), (method, name)
    with pytest.raises(EvaluationError, match="saved with other settings"):
        run_evaluation(explainer, photo_dir, ["tame"], state_path=state, **settings)


def test_method_and_metric_limits_and_option_checks(explainer, photo_dir):
    report = run_evaluation(
        explainer, photo_dir, ["tame", "rise"], metrics=("adic", "road"), method_limits={"rise": 1}, metric_limits={"road": 2},
        **FAST,
    )
    tame, rise = report.methods["tame"], report.methods["rise"]
    assert (tame["images"], tame["images_adic"], tame["images_road"]) == (3, 3, 2)
    assert (rise["images"], rise["images_adic"], rise["images_road"]) == (1, 1, 1)
    assert report.table().splitlines()[-1] == "road: first 2 images only"
    with pytest.raises(EvaluationError, match="method 'rise' has no option 'layer'"):
        run_evaluation(explainer, photo_dir, ["rise"], method_options={"rise": {"layer": "x"}})
    with pytest.raises(EvaluationError, match="unknown method 'gradcan'"):
        run_evaluation(explainer, photo_dir, ["gradcan"])
    with pytest.raises(EvaluationError, match="unknown metric group 'speed'"):
        run_evaluation(explainer, photo_dir, ["tame"], metrics=("adic", "speed"))


def test_cli_writes_json_and_csv_with_the_issue_names(random_head_path, photo_dir, tmp_path, capsys):
    out = tmp_path / "results"
    code = main([
        "evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(photo_dir), "--split", "train",
        "--methods", "tame,eigencam,rise", "--option", "rise.masks=4", "--metrics", "adic,curves", "--steps", "4",
        "--out", str(out), "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0].startswith("method") and "eigencam" in printed.out
    payload = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in payload["results"]] == ["tame", "eigencam", "rise"]
    assert PAPER_KEYS <= set(payload["results"][0])
    assert payload["settings"]["split"] == "train" and payload["settings"]["images"] == 2
    assert payload["directions"]["AD100"] == "lower" and payload["directions"]["insertion_auc"] == "higher"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["method"] for row in rows] == ["tame", "eigencam", "rise"]
    assert float(rows[2]["forward_passes"]) == 4.0
    assert np.isclose(float(rows[0]["AD100"]), payload["results"][0]["AD100"], rtol=1e-5)


def test_cli_errors_are_one_line(random_head_path, photo_dir, tmp_path, capsys):
    base = ["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(photo_dir), "--out", str(tmp_path)]
    assert main([*base, "--option", "rise-masks"]) == 2
    assert capsys.readouterr().err.strip() == "error: --option 'rise-masks' must look like NAME=VALUE"
    assert main([*base, "--metric-limit", "road=half"]) == 2
    assert "error: --metric-limit 'road=half': the limit must be a whole number of images" in capsys.readouterr().err
    assert main([*base, "--methods", "tame,gradcan"]) == 2
    assert "unknown method 'gradcan'; did you mean gradcam" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_bootstrap_difference_of_paired_values():
    from tame_core.evaluation import bootstrap_difference

    constant = bootstrap_difference([3.0, 5.0, 7.0], [1.0, 3.0, 5.0])
    assert constant == {"mean": 2.0, "low": 2.0, "high": 2.0}  # the same difference on every image: no noise
    spread = bootstrap_difference([0.0, 10.0, 0.0, 10.0], [0.0, 0.0, 0.0, 0.0], resamples=4000)
    assert spread["mean"] == 5.0 and 0.0 <= spread["low"] < 5.0 < spread["high"] <= 10.0
    assert bootstrap_difference([0.0, 10.0, 0.0, 10.0], [0.0] * 4, seed=1) == bootstrap_difference([0.0, 10.0, 0.0, 10.0], [0.0] * 4, seed=1)
    with pytest.raises(EvaluationError, match="paired values needed: got 2 and 3"):
        bootstrap_difference([1.0, 2.0], [1.0, 2.0, 3.0])


# --- batches, bad files and resume --------------------------------------------------------------------
def test_batches_that_do_not_divide_the_images_with_a_bad_file_in_the_middle(explainer, tmp_path):
    """8 files, the 4th unreadable: batches of 3 give what one batch of 8 gives, and the bad file one line."""
    folder = noise_folder(tmp_path / "images", 8, bad_at=3)
    settings = dict(metrics=("adic", "curves"), steps=2, baseline="black")
    batched = run_evaluation(explainer, folder, ["tame"], batch_size=3, **settings)
    whole = run_evaluation(explainer, folder, ["tame"], batch_size=8, **settings)
    row = batched.methods["tame"]
    assert (row["images"], row["images_adic"], row["images_curves"]) == (7, 7, 7)
    assert batched.skipped == [f"{folder / 'img3.png'}: not an image (or a format Pillow cannot read)"]
    for name in ("AD100", "IC100", "AD15", "deletion_auc", "insertion_auc"):
        assert row[name] == pytest.approx(whole.methods["tame"][name], abs=1e-4), name


def test_limits_count_files_whatever_the_batch_size(explainer, tmp_path):
    """A limit of 4 files over a bad 2nd file is 3 images at every batch size (batch 3 took 4 before)."""
    folder = noise_folder(tmp_path / "images", 7, bad_at=1)
    counts = set()
    for batch_size in (1, 3, 7):
        report = run_evaluation(explainer, folder, ["tame", "gradcam"], metrics=("adic",), batch_size=batch_size,
                          method_limits={"gradcam": 4}, metric_limits={"adic": 2})
        counts.add((report.methods["tame"]["images"], report.methods["gradcam"]["images"],
                    report.methods["tame"]["images_adic"], report.methods["gradcam"]["images_adic"]))
    assert counts == {(6, 3, 1, 1)}


def test_resume_refuses_another_head_or_changed_images(explainer, tmp_path):
    from tame_core import Explainer, TAMEHead

    folder = noise_folder(tmp_path / "images", 4)
    state = tmp_path / "state.json"
    stop = threading.Event()
    settings = dict(metrics=("adic",), batch_size=2, state_path=state)
    run_evaluation(explainer, folder, ["tame"], stop=stop, progress=lambda _, __, message: "images 3-4" in message and stop.set(), **settings)  # in batch 2
    saved = state.read_text()
    assert json.loads(saved)["tally"]["images_done"] == 2

    import torch
    torch.manual_seed(7)
    other_head = TAMEHead(explainer.head.channels, explainer.head.num_classes)  # same layers, other weights
    other = Explainer(explainer.backbone, other_head, explainer.layers, explainer.metadata)
    with pytest.raises(EvaluationError, match=r"was saved with other settings \(head weights differ\); delete it or choose another --out"):
        run_evaluation(other, folder, ["tame"], **settings)

    picture = np.asarray(Image.open(folder / "img3.png")).copy()
    picture[5, 5] ^= 0xFF  # same names, same count, one pixel
    Image.fromarray(picture).save(folder / "img3.png")
    with pytest.raises(EvaluationError, match=r"\(image files differ\)"):
        run_evaluation(explainer, folder, ["tame"], **settings)
    assert state.read_text() == saved  # a refused resume leaves the state as it was


def test_resume_refuses_other_curve_fills(explainer, tmp_path):
    """The fills are part of the run's settings: a resume with deletion to black does not mix with the mean colour."""
    folder = noise_folder(tmp_path / "images", 4)
    state = tmp_path / "state.json"
    stop = threading.Event()
    settings = dict(metrics=("curves",), steps=2, batch_size=2, state_path=state)
    run_evaluation(explainer, folder, ["tame"], stop=stop, progress=lambda _, __, message: "images 3-4" in message and stop.set(), **settings)
    saved = json.loads(state.read_text())
    assert saved["tally"]["images_done"] == 2 and saved["settings"]["curve_baseline"] == {"deletion": "mean", "insertion": "blur"}
    with pytest.raises(EvaluationError, match=r"was saved with other settings \(curve_baseline differ\)"):
        run_evaluation(explainer, folder, ["tame"], baseline="deletion=black", **settings)
    resumed = run_evaluation(explainer, folder, ["tame"], baseline="deletion=mean,insertion=blur", **settings)  # the same fills, spelt out
    assert resumed.methods["tame"]["images_curves"] == 4


@pytest.mark.slow
def test_a_killed_evaluation_resumes_with_the_same_arguments_only(explainer, random_head_path, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from tame_core import TAMEHead, save_head
    from tame_core.card import metadata_for

    folder = noise_folder(tmp_path / "images", 12)
    torch.manual_seed(7)
    other_head = TAMEHead(explainer.head.channels, explainer.head.num_classes).eval()  # same layers, other weights
    other_path = tmp_path / "other.safetensors"
    save_head(other_head, metadata_for(other_head, explainer.backbone, explainer.layers), other_path)
    out = tmp_path / "results"
    command = [sys.executable, "-m", "tame_core", "evaluate", "--head", str(random_head_path), "--device", "cpu",
               "--data", str(folder), "--methods", "tame", "--metrics", "adic,curves", "--steps", "10", "--baseline", "deletion=black,insertion=black",
               "--batch-size", "2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    state = out / "evaluation_state.json"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["tally"]["images_done"] >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = state.read_text()
    done = json.loads(saved)["tally"]["images_done"]
    assert 2 <= done < 12

    def tame(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *arguments], env=env, capture_output=True, text=True, timeout=600, check=False)

    other = tame("--resume", "--head", str(other_path))
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        f"error: evaluation state {state} was saved with other settings (head weights differ); "
        "delete it or choose another --out to start afresh"
    ]
    assert state.read_text() == saved
    resumed = tame("--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    row = json.loads((out / "results.json").read_text())["results"][0]
    whole = run_evaluation(explainer, folder, ["tame"], metrics=("adic", "curves"), steps=10, baseline="black", batch_size=2)
    assert row["images"] == 12
    for name in ("AD100", "IC50", "deletion_auc", "insertion_auc"):
        assert row[name] == pytest.approx(whole.methods["tame"][name], abs=1e-4), name


# --- per-image rows, comparison, per-image resume ----------------------------------------------------
def test_every_mean_is_computed_from_the_per_image_rows(explainer, tmp_path):
    folder = noise_folder(tmp_path / "images" / "sub", 5, bad_at=2).parent
    report = run_evaluation(explainer, folder, ["tame", "gradcam"], metrics=("adic",), batch_size=2, method_limits={"gradcam": 3})
    rows = report.per_image()
    assert [(row["image"], row["method"]) for row in rows] == [
        ("sub/img0.png", "tame"), ("sub/img0.png", "gradcam"), ("sub/img1.png", "tame"), ("sub/img1.png", "gradcam"),
        ("sub/img3.png", "tame"), ("sub/img4.png", "tame"),
    ]  # keyed by the path below --data; the unreadable file has no row, gradcam stops at the 3rd file
    for method, count in (("tame", 4), ("gradcam", 2)):
        mine = [row for row in rows if row["method"] == method]
        assert report.methods[method]["images"] == report.methods[method]["images_adic"] == count == len(mine)
        for name in ("AD100", "IC15", "ms_per_image", "forward_passes"):
            assert report.methods[method][name] == pytest.approx(np.mean([row[name] for row in mine]), rel=1e-12), name
    assert {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "ms_per_image", "forward_passes", "backward_passes"} <= set(rows[0])


def _toy_report(a_values: dict[str, list[float]], b_values: dict[str, list[float]], b_images: int | None = None):
    """A report of hand-made rows: method ``tame`` has ``a_values`` per image, ``gradcam`` ``b_values``."""
    from tame_core.evaluation import EvaluationReport

    rows = []
    for method, values in (("tame", a_values), ("gradcam", b_values)):
        count = len(next(iter(values.values())))
        for image in range(count if method == "tame" or b_images is None else b_images):
            rows.append({"image": f"img{image}.png", "method": method, "ms_per_image": 1.0, "forward_passes": 1.0,
                         "backward_passes": 0.0, "values": {"toy": {name: column[image] for name, column in values.items()}}})
    return EvaluationReport.from_rows({}, rows, ["tame", "gradcam"])


def test_compare_gives_the_bootstrap_interval_worked_out_by_hand():
    """Paired differences tame - gradcam over 3 images. The mean of 3 images drawn with replacement is the
    smallest difference only when all three draws hit it: probability 1/27 = 3.7 %, over the 2.5 % tail, so
    the 95 % interval runs exactly from the smallest to the largest difference; equal differences give a
    point. AD100 (lower is better) +1, +2, +3: tame is worse, interval [1, 3]. IC100 (higher is better)
    +2 on every image: better, [2, 2]. Deletion AUC -0.1, 0, +0.1: within noise, [-0.1, 0.1]."""
    report = _toy_report(
        {"AD100": [11.0, 22.0, 33.0], "IC100": [5.0, 7.0, 9.0], "deletion_auc": [0.2, 0.5, 0.9]},
        {"AD100": [10.0, 20.0, 30.0], "IC100": [3.0, 5.0, 7.0], "deletion_auc": [0.3, 0.5, 0.8]},
    )
    rows = {row["metric"]: row for row in report.compare("tame", "gradcam")}
    assert rows["AD100"] == {"metric": "AD100", "images": 3, "mean": 2.0, "low": 1.0, "high": 3.0, "verdict": "worse"}
    assert rows["IC100"] == {"metric": "IC100", "images": 3, "mean": 2.0, "low": 2.0, "high": 2.0, "verdict": "better"}
    assert rows["deletion_auc"] == {"metric": "deletion_auc", "images": 3, "mean": 0.0, "low": -0.1, "high": 0.1, "verdict": "within noise"}
    flipped = {row["metric"]: row for row in report.compare("gradcam", "tame")}
    assert (flipped["AD100"]["low"], flipped["AD100"]["high"], flipped["AD100"]["verdict"]) == (-3.0, -1.0, "better")
    area = {row["metric"]: row for row in _toy_report({"area": [40.0, 50.0, 60.0]}, {"area": [30.0, 45.0, 50.0]}).compare("tame", "gradcam")}
    assert area["area"]["verdict"] == "larger" and (area["area"]["low"], area["area"]["high"]) == (5.0, 10.0)  # no way is better
    flipped_area = _toy_report({"area": [30.0, 45.0, 50.0]}, {"area": [40.0, 50.0, 60.0]}).compare("tame", "gradcam")
    assert flipped_area[0]["verdict"] == "smaller"
    fewer = _toy_report({"AD100": [11.0, 22.0, 33.0]}, {"AD100": [10.0, 20.0, 30.0]}, b_images=2)
    assert fewer.compare("tame", "gradcam")[0]["images"] == 2  # paired over the images both measured
    with pytest.raises(EvaluationError, match="--compare: no per-image results for method 'rise'"):
        report.compare("tame", "rise")


def test_evaluate_writes_per_image_rows_and_compares_on_the_command_line(tmp_path, random_head_path, capsys):
    folder = noise_folder(tmp_path / "images", 3)
    out = tmp_path / "out"
    base = ["evaluate", "--head", str(random_head_path), "--device", "cpu", "--data", str(folder), "--out", str(out),
            "--methods", "tame,gradcam", "--metrics", "adic", "--no-progress"]
    assert main([*base, "--compare", "tame,rise"]) == 2
    assert capsys.readouterr().err.strip() == "error: --compare: method 'rise' is not in --methods (tame,gradcam)"
    assert main([*base, "--compare", "tame,gradcam"]) == 0
    printed = capsys.readouterr().out
    assert "tame - gradcam: mean difference over the same images, 95% bootstrap interval, verdict for tame" in printed
    assert any(line.startswith("AD100↓") and "(3 images)" in line for line in printed.splitlines())
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [(row["image"], row["method"]) for row in rows] == [(f"img{i}.png", m) for i in range(3) for m in ("tame", "gradcam")]
    means = {row["method"]: row for row in csv.DictReader((out / "results.csv").open())}
    for method in ("tame", "gradcam"):
        values = [float(row["AD50"]) for row in rows if row["method"] == method]
        assert float(means[method]["AD50"]) == pytest.approx(np.mean(values), rel=1e-5)


def test_a_stop_keeps_the_methods_that_finished_the_batch_in_progress(explainer, tmp_path, monkeypatch):
    """One batch of 5 images, stopped while its second method runs: the first method's 5 rows are kept (the
    images are not done), and the resume runs only the method they lack, to the rows of one whole run."""
    import tame_core.evaluation.run as run_module

    folder = noise_folder(tmp_path / "images", 5)
    settings = dict(metrics=("adic", "curves"), steps=4, batch_size=8)
    whole = run_evaluation(explainer, folder, ["tame", "gradcam"], **settings)
    calls: list[tuple[str, int]] = []
    real = run_module.explain_with
    monkeypatch.setattr(run_module, "explain_with", lambda e, x, c, method, **o: calls.append((method, len(x))) or real(e, x, c, method, **o))
    state, stop = tmp_path / "state.json", threading.Event()
    stopped = run_evaluation(explainer, folder, ["tame", "gradcam"], state_path=state, stop=stop,
                             progress=lambda done, total, message: message.startswith("gradcam") and stop.set(), **settings)
    saved = json.loads(state.read_text())["tally"]
    assert saved["done"] == [] and sorted((r["image"], r["method"]) for r in saved["rows"]) == [(f"img{i}.png", "tame") for i in range(5)]
    assert stopped.methods["tame"]["images"] == 5 and "gradcam" not in stopped.methods
    calls.clear()
    resumed = run_evaluation(explainer, folder, ["tame", "gradcam"], state_path=state, **settings)
    assert calls == [("gradcam", 5)]  # not TAME again
    assert [(r["image"], r["method"]) for r in resumed.per_image()] == [(r["image"], r["method"]) for r in whole.per_image()]
    for mine, theirs in zip(resumed.per_image(), whole.per_image()):
        for name in ("AD100", "IC15", "deletion_auc", "insertion_auc"):
            assert mine[name] == pytest.approx(theirs[name], abs=1e-5), (mine["image"], mine["method"], name)


def test_a_resumed_run_redoes_no_finished_image(explainer, tmp_path, monkeypatch):
    """Stopped in its 3rd batch, then resumed: the resumed run forwards exactly what a run of the images
    left does, each finished image was read once, and the rows are those of one whole run."""
    folder = noise_folder(tmp_path / "images", 7)
    settings = dict(metrics=("adic",), batch_size=2)
    forwards = []
    hook = explainer.backbone.register_forward_hook(lambda module, args, output: forwards.append(args[0].shape[0]))
    try:
        _resume_and_count(explainer, folder, settings, forwards, tmp_path, monkeypatch)
    finally:
        hook.remove()


def _resume_and_count(explainer, folder, settings, forwards, tmp_path, monkeypatch):
    import tame_core.evaluation.run as run_module

    reads: list[str] = []
    real_load = run_module.load_image
    monkeypatch.setattr(run_module, "load_image", lambda path, **kw: reads.append(Path(path).name) or real_load(path, **kw))
    whole = run_evaluation(explainer, folder, ["tame"], state_path=tmp_path / "whole.json", **settings)

    state, stop = tmp_path / "state.json", threading.Event()
    run_evaluation(explainer, folder, ["tame"], state_path=state, stop=stop,
                   progress=lambda _, __, message: "images 5-6" in message and stop.set(), **settings)
    finished = json.loads(state.read_text())["tally"]["done"]
    assert finished == ["img0.png", "img1.png", "img2.png", "img3.png"]
    forwards.clear()
    reads.clear()
    resumed = run_evaluation(explainer, folder, ["tame"], state_path=state, **settings)
    resumed_forwards, resumed_reads = sum(forwards), list(reads)
    assert resumed_reads == ["img4.png", "img5.png", "img6.png"]
    listing = tmp_path / "rest.txt"
    listing.write_text("img4.png\nimg5.png\nimg6.png\n")
    forwards.clear()
    run_evaluation(explainer, folder, ["tame"], list_file=listing, **settings)
    assert resumed_forwards == sum(forwards) > 0  # not one forward for a finished image
    # the state counts the forwards of its saved batches over both attempts: those of one whole run
    counted = [json.loads(path.read_text())["tally"]["forwards"] for path in (state, tmp_path / "whole.json")]
    assert counted[0] == counted[1] > 0
    assert [(r["image"], r["method"]) for r in resumed.per_image()] == [(r["image"], r["method"]) for r in whole.per_image()]
    for mine, theirs in zip(resumed.per_image(), whole.per_image()):
        for name in ("AD100", "IC50", "AD15"):
            assert mine[name] == pytest.approx(theirs[name], abs=1e-5), (mine["image"], name)
