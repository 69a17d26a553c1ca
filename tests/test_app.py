"""The Streamlit app through streamlit.testing.v1.AppTest: every page, on the real lite0 with an untrained head."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tame_core.studio import JobState

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = ("explain", "branches", "curves", "compare", "train", "evaluate", "demo")
TABBY = 281


@pytest.fixture
def app(monkeypatch, random_head_path):
    monkeypatch.setenv("TAME_HEAD", str(random_head_path))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    yield at
    workspace = at.session_state["workspace"] if "workspace" in at.session_state else None
    for job in getattr(workspace, "jobs", {}).values():
        job.stop()
        job.wait(120)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"pages/{page}.py").run()


def pick_sample(at: AppTest, key: str = "chelsea") -> AppTest:
    open_page(at, "explain")
    return ok(at.button(key=f"sample-{key}").click().run())


def finish_jobs(at: AppTest, timeout: float = 300) -> AppTest:
    """Wait for the session's background jobs, then rerun so the page shows their results."""
    for job in at.session_state["workspace"].jobs.values():
        assert job.wait(timeout), f"{job.name} still running"
        assert job.state is JobState.DONE, f"{job.name}: {job.state} {job.error}"
    return at.run()


def image_urls(at: AppTest) -> list[str]:
    return [url for image in at.main.get("image") for url in image.value]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_page_runs_before_any_image_is_chosen(app):
    for page in PAGES:
        ok(open_page(app, page))
    open_page(app, "branches")
    assert "Upload an image or pick a sample" in app.info[0].value
    sidebar_text = " ".join(c.value for c in app.sidebar.caption)
    assert "efficientnet_lite0" in sidebar_text and "3 branches" in sidebar_text


def test_explain_a_sample_then_switch_class(app):
    pick_sample(app)
    overlay, raw = app.main.get("image")[:2]
    assert overlay.captions[0].startswith("Egyptian cat (285): p = ")
    top5 = app.dataframe[0].value
    assert list(top5["class"])[:3] == ["Egyptian cat (285)", "tiger cat (282)", "tabby (281)"] and len(top5) == 5
    assert [b.label for b in app.get("download_button")] == ["Overlay (.png)", "Map (.npy)"]
    before = image_urls(app)

    picker = next(s for s in app.selectbox if s.key.startswith("class-"))
    ok(picker.set_value(TABBY).run())
    assert app.main.get("image")[0].captions[0].startswith("tabby (281): p = ")
    after = image_urls(app)
    assert after[0] != before[0] and after[1] != before[1]  # the overlay and the raw map both changed
    opacity = app.slider(key="alpha")
    ok(opacity.set_value(0.9).run())
    assert image_urls(app)[0] != after[0] and image_urls(app)[1] == after[1]  # only the overlay


def test_uploads_good_and_bad_keep_the_app_usable(app, sample_images):
    open_page(app, "explain")
    bad = [
        ("notes.jpg", b"just text, not a photo", "image/jpeg"),
        ("empty.png", b"", "image/png"),
        ("cut.jpg", png(sample_images["coffee"])[:300], "image/jpeg"),
    ]
    uploader = app.file_uploader(key="uploads")
    uploader.set_value([("rocket.png", png(sample_images["rocket"]), "image/png"), *bad]).run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 3
    assert errors[0].startswith("notes.jpg: not an image")
    assert errors[1].startswith("empty.png: empty file")
    assert errors[2].startswith("cut.jpg: corrupt or truncated")
    assert app.main.get("image")[0].captions[0].endswith("%")  # the good one is explained
    assert app.sidebar.selectbox(key="active_image").value is not None
    ok(app.button(key="sample-coffee").click().run().file_uploader(key="uploads").set_value(None).run())
    assert app.sidebar.selectbox(key="active_image").options == ["rocket.png", "Cup of coffee"]


def test_several_uploads_are_all_explained(app, sample_images):
    open_page(app, "explain")
    files = [(f"{name}.png", png(sample_images[name]), "image/png") for name in ("chelsea", "coffee", "rocket")]
    ok(app.file_uploader(key="uploads").set_value(files).run())
    ok(app.toggle(key="show_all").set_value(True).run())
    grid = app.main.get("image")[2:]
    assert len(grid) == 3
    assert [b.label.split(":")[0] for b in app.button if b.key and b.key.startswith("open-")] == [
        "chelsea.png",
        "coffee.png",
        "rocket.png",
    ]


def test_branch_toggles_change_the_map_and_show_ad_ic(app):
    pick_sample(app)
    ok(open_page(app, "branches"))
    toggles = [t for t in app.toggle if t.key.startswith("branch-")]
    assert [t.label for t in toggles] == ["`blocks.2`", "`blocks.4`", "`blocks.6`"] and all(t.value for t in toggles)
    finish_jobs(app)
    ok(app)
    metrics = {m.label: m.value for m in app.metric}
    assert set(metrics) == {"P(class | image × map)", "AD100", "IC100", "AD50", "IC50", "AD15", "IC15"}
    full_map, *contributions = image_urls(app)
    assert len(contributions) == 3

    ok(toggles[0].set_value(False).run())
    finish_jobs(app)  # nothing to measure: every combination was measured already
    assert image_urls(app)[0] != full_map
    assert [i.captions[0] for i in app.main.get("image")[1:]] == ["blocks.2 (off)", "blocks.4", "blocks.6"]
    assert image_urls(app)[1:] == contributions  # each branch's own term does not depend on the toggles
    assert {m.label: m.value for m in app.metric} != metrics
    assert all(m.delta for m in app.metric)  # compared with all branches on

    for toggle in [t for t in app.toggle if t.key.startswith("branch-")][1:]:
        toggle.set_value(False)
    ok(app.run())
    assert "All branches are off" in app.warning[0].value


def test_deletion_curves_are_drawn_with_their_auc(app):
    pick_sample(app)
    open_page(app, "curves")
    ok(app.select_slider(key="curve_steps").set_value(10).run())
    finish_jobs(app)
    ok(app)
    assert len(app.get("plotly_chart")) == 2
    table = app.dataframe[0].value
    assert list(table["method"]) == ["tame"]
    assert 0 <= table["deletion_auc"][0] <= 1 and 0 <= table["insertion_auc"][0] <= 1
    step = app.slider(key="curve_view_step")
    start = image_urls(app)
    ok(step.set_value(10).run())
    assert image_urls(app) != start and app.main.get("image")[0].captions[0] == "deletion: 100% of pixels deleted"


def test_compare_shows_each_method_with_time_and_passes(app):
    pick_sample(app)
    open_page(app, "compare")
    ok(app.multiselect(key="compare_methods").set_value(["gradcam"]).run())
    finish_jobs(app)
    ok(app)
    captions = [i.captions[0] for i in app.main.get("image")]
    assert captions[0].startswith("tame: ") and captions[0].endswith("1 forward / 0 backward")
    assert captions[1].startswith("gradcam: ")
    assert list(app.dataframe[0].value["method"]) == ["tame", "gradcam"]


def samples():
    from tame_core.studio import GALLERY, load_sample

    return [load_sample(key) for key in GALLERY]


def test_demo_mode_steps_through_the_gallery(app):
    ok(open_page(app, "demo"))
    first = app.markdown[0].value
    assert first.startswith("## Chelsea the cat: the model sees **")
    ok(app.button(key="demo_next").click().run())
    assert app.markdown[0].value.startswith("## Cup of coffee: ")
    finish_jobs(app)
    assert all(app.session_state["workspace"].cached(app.session_state["model"], s.digest) for s in samples())
    ok(app.button(key="demo_back").click().run().button(key="demo_back").click().run())
    assert app.markdown[0].value.startswith("## Hubble deep field: ")


def test_a_head_that_cannot_load_gives_an_error_not_a_traceback(app, tmp_path):
    app.sidebar.selectbox(key="head_source").set_value("file").run()
    app.sidebar.text_input(key="head_path").input(str(tmp_path / "missing.safetensors")).run()
    assert not app.exception
    assert app.sidebar.error[0].value == f"Cannot load the model: no head checkpoint at {tmp_path / 'missing.safetensors'}"
    assert app.info[0].value.startswith("No model to explain with")
    app.sidebar.selectbox(key="head_source").set_value("bundled").run()
    ok(app)


def test_unexpected_failures_show_a_short_error(app, monkeypatch):
    from tame_core.studio import render

    pick_sample(app)

    def broken(*args, **kwargs):
        raise RuntimeError("colour table\nmissing")

    monkeypatch.setattr(render, "overlay_image", broken)
    app.run()
    assert not app.exception
    assert app.error[0].value.startswith("Something went wrong (RuntimeError: colour table missing).")


def test_two_sessions_never_share_images_or_results(monkeypatch, random_head_path):
    monkeypatch.setenv("TAME_HEAD", str(random_head_path))
    first = AppTest.from_file(str(APP), default_timeout=180).run()
    second = AppTest.from_file(str(APP), default_timeout=180).run()
    pick_sample(first, "rocket")
    second.run()
    assert "Falcon 9 launch" not in " ".join(str(s.options) for s in second.sidebar.selectbox)
    assert second.session_state["workspace"].current is None
    assert first.session_state["workspace"] is not second.session_state["workspace"]


@pytest.mark.slow
def test_train_page_trains_a_head_and_pushes_it(app, tmp_path, sample_images, fake_hub):
    data = tmp_path / "images"
    data.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(sample_images[name]).save(data / f"{name}.png")
    open_page(app, "train")
    app.text_input(key="train_folder").input(str(tmp_path / "nowhere")).run()
    assert app.error[0].value == f"{tmp_path / 'nowhere'}: not a folder on this server"
    app.text_input(key="train_folder").input(str(data)).run()
    app.text_input(key="train_name").input("tiny").run()
    app.select_slider(key="train_batch").set_value(4).run()
    ok(app.number_input(key="train_epochs").set_value(1).run())
    ok(app.button(key="train_start").click().run())
    job = app.session_state["workspace"].jobs["train"]
    assert job.wait(600) and job.state is JobState.DONE, job.error
    ok(app.run())
    assert job.result == app.session_state["session_folder"].heads / "tiny.safetensors" and job.result.is_file()
    assert app.success[0].value.startswith(f"Saved {job.result}")
    assert len(app.get("plotly_chart")) == 1
    app.text_input(key="push_repo").input("team/trained-in-app").run()
    ok(app.button(key="push").click().run())
    assert "team/trained-in-app" in app.success[1].value
    assert set(fake_hub.resolve("team/trained-in-app", "main")[1]) == {"head.safetensors", "head.json", "README.md"}


def test_evaluate_page_makes_the_table_and_offers_csv(app, tmp_path, sample_images):
    data = tmp_path / "images"
    data.mkdir()
    for name in ("chelsea", "rocket"):
        Image.fromarray(sample_images[name]).save(data / f"{name}.png")
    ok(open_page(app, "evaluate"))
    app.text_input(key="eval_folder").input(str(tmp_path / "nowhere")).run()
    assert app.error[0].value == f"{tmp_path / 'nowhere'}: not a folder on this server"
    app.text_input(key="eval_folder").input(str(data)).run()
    app.multiselect(key="eval_methods").set_value(["tame"]).run()
    ok(app.select_slider(key="eval_steps").set_value(10).run())
    ok(app.button(key="eval_start").click().run())
    finish_jobs(app)
    ok(app)
    table = app.dataframe[0].value
    assert list(table["method"]) == ["tame"] and list(table["images"]) == [2]
    assert {"AD100 ↓", "IC100 ↑", "deletion_auc ↓", "insertion_auc ↑", "ms_per_image ↓"} <= set(table.columns)
    assert [b.label for b in app.get("download_button")] == ["Results (.csv)", "Results (.json)"]


def test_heads_from_an_upload_or_the_hub(app, fake_hub, random_head_path):
    app.sidebar.selectbox(key="head_source").set_value("upload").run()
    assert app.info[0].value == "No model to explain with: choose a head in the sidebar."
    app.file_uploader(key="head_upload").set_value(("junk.safetensors", b"junk", "application/octet-stream")).run()
    assert not app.exception and app.sidebar.error[0].value.startswith("junk.safetensors: not a readable safetensors file")
    head = random_head_path.read_bytes()
    ok(app.file_uploader(key="head_upload").set_value(("mine.safetensors", head, "application/octet-stream")).run())
    assert app.session_state["model"].choice.head.endswith(".safetensors")

    fake_hub.commit(
        "team/app-head",
        {"head.safetensors": head, "head.json": random_head_path.with_suffix(".json").read_bytes()},
    )
    app.sidebar.selectbox(key="head_source").set_value("hub").run()
    ok(app.sidebar.text_input(key="hub_repo").input("team/app-head").run())
    assert app.session_state["model"].choice.head == "team/app-head"
    assert "efficientnet_lite0" in " ".join(c.value for c in app.sidebar.caption)
    app.sidebar.text_input(key="hub_repo").input("team/missing").run()
    assert not app.exception
    assert app.sidebar.error[0].value.startswith("Cannot load the model: ") and "team/missing" in app.sidebar.error[0].value
