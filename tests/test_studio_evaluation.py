"""The Evaluate page's per-image view (tame_core.studio.per_image): thumbnails kept as maps are measured,
the per-image table, the paired comparison and its figure, without Streamlit."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from noise_images import noise_folder
from tame_core.evaluation import EvaluationConfig
from tame_core.studio import Job, JobState, ModelChoice
from tame_core.studio import evaluation as studio_evaluation
from tame_core.studio.evaluation import evaluation_work, forget_run, state_path
from tame_core.studio.per_image import (
    THUMBNAIL_PX,
    ThumbnailKeeper,
    comparison_rows,
    default_pair,
    map_path,
    per_image_rows,
    picture_path,
    thumbnail_folder,
)
from tame_core.studio.plots import VERDICT_COLOURS, comparison_figure

METHODS = ("tame", "gradcam")


def run(work) -> Job:
    job = Job("test", work).start()
    assert job.wait(300)
    assert job.state is JobState.DONE, job.error
    return job


def pixels(uri: str) -> np.ndarray:
    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, random_head_path):
    """A tiny finished evaluation of two methods on three noise images."""
    root = tmp_path_factory.mktemp("per_image")
    data = noise_folder(root / "images", 3)
    choice = ModelChoice(head=str(random_head_path))
    config = EvaluationConfig(data=str(data), methods=METHODS, steps=4, metrics=("adic", "curves"))
    job = run(lambda context: evaluation_work(choice, config, context, root / "state"))
    return job.result, thumbnail_folder(state_path(config, choice, root / "state"))


def test_per_image_rows_hold_every_metric_and_thumbnails_of_the_crop_and_each_map(finished):
    report, thumbs = finished
    rows = per_image_rows(report, thumbs)
    assert [(row["image"], row["method"]) for row in rows] == [(f"img{i}.png", m) for i in range(3) for m in METHODS]
    expected = report.per_image()
    for row, raw in zip(rows, expected):
        assert row["AD100 ↓"] == raw["AD100"] and row["IC15 ↑"] == raw["IC15"]
        assert row["deletion_auc ↓"] == raw["deletion_auc"] and row["insertion_auc ↑"] == raw["insertion_auc"]
        assert "MoRF ↓" not in row  # ROAD was not run: no empty column
        assert "area" not in row and "area" in raw  # read beside the means, kept in the download, not in this table
        assert pixels(row["picture"]).shape == (THUMBNAIL_PX, THUMBNAIL_PX, 3)  # the square crop, shrunk
        assert pixels(row["map"]).shape == (THUMBNAIL_PX, THUMBNAIL_PX, 3)
    tame, gradcam = rows[0], rows[1]
    assert tame["picture"] == gradcam["picture"]  # one picture per image
    assert tame["map"] != gradcam["map"] and tame["map"] != tame["picture"]  # one map per method
    assert rows[0]["picture"] != rows[2]["picture"]  # another image
    assert all(row["picture"] is None and row["map"] is None for row in per_image_rows(report, thumbs, limit=2)[4:])
    assert all(row["picture"] is None for row in per_image_rows(report, None))


def test_the_keeper_draws_the_map_over_the_crop_and_keeps_only_the_first_images(tmp_path):
    inputs = torch.full((3, 3, 224, 224), 0.5)
    maps = torch.zeros(3, 224, 224)
    keeper = ThumbnailKeeper(tmp_path / "thumbs", limit=2)
    keeper(["a.png", "b/c.png", "d.png"], "tame", inputs, maps)
    assert len(list((tmp_path / "thumbs" / "pictures").iterdir())) == 2  # d.png is past the limit
    report = type("Report", (), {"per_image": lambda self: [
        {"image": key, "method": "tame", "AD100": 1.0} for key in ("a.png", "b/c.png", "d.png")
    ]})()
    a, c, d = per_image_rows(report, tmp_path / "thumbs")
    assert np.all(pixels(a["picture"]) == 128)  # 0.5 grey
    assert np.abs(pixels(c["map"]).astype(int) - [64, 64, 128]).max() <= 1  # half jet's 0 (dark blue), half grey
    assert d["picture"] is None and d["map"] is None
    again = ThumbnailKeeper(tmp_path / "thumbs", limit=2)  # a resume: the images kept before still count
    again(["d.png", "a.png"], "gradcam", inputs[:2], maps[:2] + 1.0)
    assert len(list((tmp_path / "thumbs" / "pictures").iterdir())) == 2
    assert map_path(tmp_path / "thumbs", "a.png", "gradcam").is_file()
    assert not map_path(tmp_path / "thumbs", "d.png", "gradcam").exists()
    assert len(list((tmp_path / "thumbs" / "maps").rglob("*.png"))) == 3  # tame for a and b/c, gradcam for a


def test_thumbnails_from_before_a_stop_survive_the_resume(tmp_path, random_head_path, monkeypatch):
    data = noise_folder(tmp_path / "images", 4)
    choice = ModelChoice(head=str(random_head_path))
    config = EvaluationConfig(data=str(data), methods=("tame",), steps=4, metrics=("adic",), batch_size=2)
    folder = thumbnail_folder(state_path(config, choice, tmp_path / "state"))
    job: Job

    class StopInSecondBatch(ThumbnailKeeper):
        def __call__(self, keys, method, inputs, maps):
            super().__call__(keys, method, inputs, maps)
            if "img2.png" in keys:
                job.stop()  # the next forward stops: this batch is dropped, the first one was saved

    monkeypatch.setattr(studio_evaluation, "ThumbnailKeeper", StopInSecondBatch)
    job = Job("evaluate", lambda context: evaluation_work(choice, config, context, tmp_path / "state")).start()
    assert job.wait(300) and job.state is JobState.STOPPED, job.error
    assert job.result.settings["images_done"] == 2
    before = {path: path.stat().st_ino for path in folder.rglob("*.png")}
    assert len(before) == 8  # picture and map of img0..img3: the dropped batch's too
    monkeypatch.undo()
    resumed = run(lambda context: evaluation_work(choice, config, context, tmp_path / "state"))
    rows = per_image_rows(resumed.result, folder)
    assert [row["image"] for row in rows] == [f"img{i}.png" for i in range(4)]
    assert all(row["picture"] and row["map"] for row in rows)
    after = {path: path.stat().st_ino for path in folder.rglob("*.png")}
    first_batch = [path(folder, key, "tame") if path is map_path else path(folder, key)
                   for key in ("img0.png", "img1.png") for path in (picture_path, map_path)]
    assert all(after[p] == before[p] for p in first_batch)  # not rewritten on resume
    assert all(after[map_path(folder, key, "tame")] != before[map_path(folder, key, "tame")]
               for key in ("img2.png", "img3.png"))  # the dropped batch's maps were redone
    forget_run(config, choice, tmp_path / "state")  # a fresh run starts without them
    assert not folder.exists() and not state_path(config, choice, tmp_path / "state").exists()


def test_the_comparison_table_and_figure_are_report_compare(finished):
    report, _ = finished
    assert default_pair(list(report.methods)) == ("tame", "gradcam")
    assert default_pair(["gradcam", "rise", "tame"]) == ("tame", "gradcam") and default_pair(["gradcam"]) is None
    rows = comparison_rows(report, "tame", "gradcam")
    compared = {row["metric"]: row for row in report.compare("tame", "gradcam")}
    names = ["AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "area", "deletion_auc", "insertion_auc"]
    arrows = {n: "" if n == "area" else " ↑" if n.startswith(("IC", "ins")) else " ↓" for n in names}  # area: no way is better
    assert [row["metric"] for row in rows] == [n + arrows[n] for n in names]
    for row, name in zip(rows, names):
        want = compared[name]
        assert (row["mean difference"], row["low"], row["high"], row["verdict"], row["images"]) == (
            want["mean"], want["low"], want["high"], want["verdict"], want["images"]
        ) and want["images"] == 3
    figure = comparison_figure(rows, "tame", "gradcam")
    assert len(figure.data) == len(rows)
    for trace, row in zip(figure.data, rows):
        (mean,) = trace.x
        assert mean == row["mean difference"]
        assert mean + trace.error_x.array[0] == pytest.approx(row["high"], abs=1e-12)
        assert mean - trace.error_x.arrayminus[0] == pytest.approx(row["low"], abs=1e-12)
        assert trace.marker.color == VERDICT_COLOURS[row["verdict"]] and trace.name == row["verdict"]
    flat = comparison_figure([{**rows[0], "mean difference": 0.0, "low": 0.0, "high": 0.0}], "tame", "gradcam")
    assert list(flat.layout.xaxis.range) == [-1.0, 1.0]  # all images tie: a readable axis, not ±1e-9
    axis = figure.layout.yaxis
    assert list(axis.ticktext) == [rows[0]["metric"]]
    low, high = figure.layout.xaxis.range
    assert low == -high and low <= min(rows[0]["low"], 0) and high >= max(rows[0]["high"], 0)  # 0 in the middle
