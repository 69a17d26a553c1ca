"""The Streamlit app through streamlit.testing.v1.AppTest: every page, on the real lite0 with an untrained head."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tame_core.studio import JobState
from noise_images import noise_folder

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
    top5 = app.radio[0].options
    assert [o.split(" · ")[0] for o in top5[:3]] == ["Egyptian cat (285)", "tiger cat (282)", "tabby (281)"] and len(top5) == 5
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
    assert not [i for i in app.info if "where it would look" in i.value]
    ok(picker.set_value(967).run())  # espresso: the model all but rules it out for a cat
    assert any(i.value.startswith("The model gives this class 0.") and "not what it sees" in i.value for i in app.info)
    wrong = [c.value for c in app.caption if c.value == "the model gets this wrong: see why"]
    assert len(wrong) == 1  # the Falcon 9 launch (read as a drilling platform)


def test_a_click_on_a_top5_row_explains_that_class(app):
    pick_sample(app)
    top5 = app.radio[0]
    assert top5.value == 285 and top5.options[:3] == ["Egyptian cat (285) · 45.5%", "tiger cat (282) · 16.2%", "tabby (281) · 14.0%"]
    ok(top5.set_value(TABBY).run())  # a click on the third class
    assert app.main.get("image")[0].captions[0].startswith("tabby (281): p = ")
    picker = next(s for s in app.selectbox if s.key.startswith("class-"))
    assert picker.value == TABBY  # the picker follows the click
    ok(picker.set_value(967).run())  # and a later choice in the picker is not undone by the old click
    assert app.main.get("image")[0].captions[0].startswith("espresso (967): p = ")
    assert app.radio[0].value is None  # espresso is not among the five: none is marked
    ok(app.radio[0].set_value(TABBY).run())  # the same class again
    assert app.main.get("image")[0].captions[0].startswith("tabby (281): p = ")
    ok(next(s for s in app.selectbox if s.key.startswith("class-")).set_value(282).run())  # a top-5 class typed
    assert app.radio[0].value == 282 and app.main.get("image")[0].captions[0].startswith("tiger cat (282): p = ")


def test_a_large_pictures_downloads_state_their_size(app):
    open_page(app, "explain")
    ramp = np.broadcast_to(np.linspace(0, 255, 2048, dtype=np.uint8)[None, :, None], (1536, 2048, 3)).copy()
    ok(app.file_uploader(key="uploads").set_value([("large.png", png(ramp), "image/png")]).run())
    assert "Downloads are 1024×768 px (the picture is 2048×1536 px)." in [c.value for c in app.caption]
    assert "the picture is 1536×2048, worked on at 768×1024" in app.get("download_button")[1].proto.help


def test_a_tiny_picture_gets_a_note(app):
    open_page(app, "explain")
    tiny = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    ok(app.file_uploader(key="uploads").set_value([("tiny.png", png(tiny), "image/png")]).run())
    assert any(i.value.startswith("This picture is only 16×12 pixels") for i in app.info)


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
    grid = app.main.get("image")[3:]  # after the overlay, the map and its colour scale
    assert len(grid) == 3
    assert [b.label.split(":")[0] for b in app.button if b.key and b.key.startswith("open-")] == [
        "chelsea.png",
        "coffee.png",
        "rocket.png",
    ]
    coffee = next(b for b in app.button if b.key and b.key.startswith("open-") and b.label.startswith("coffee.png"))
    ok(coffee.click().run())  # a click in the grid opens that picture: the page and the sidebar follow
    assert app.session_state["workspace"].current_image.name == "coffee.png"
    assert app.sidebar.selectbox(key="active_image").value == app.session_state["workspace"].current


def branch_tiles(at: AppTest) -> list:
    return [i for i in at.main.get("image") if i.captions and "of the total" in i.captions[0]]


def test_branch_toggles_change_the_map_and_show_ad_ic(app):
    pick_sample(app)
    ok(open_page(app, "branches"))
    toggles = [t for t in app.toggle if t.key.startswith("branch-")]
    assert [t.label.split(", ")[0] for t in toggles] == ["fine detail (blocks.2", "parts (blocks.4", "whole object (blocks.6"]
    assert [t.label.split(", ")[1] for t in toggles] == ["28×43)", "14×22)", "7×11)"]  # the grid over this (wide) picture
    assert all(t.value for t in toggles) and "channels" not in toggles[0].help
    finish_jobs(app)
    ok(app)
    metrics = {m.label: m.value for m in app.metric}
    assert set(metrics) == {"P(class | image × map)", "AD100", "IC100", "AD50", "IC50", "AD15", "IC15"}
    assert all(metrics[f"IC{kept}"] in ("0%", "100%") for kept in (100, 50, 15))  # one picture: whole numbers that fit
    full_map = image_urls(app)[0]
    contributions = [url for tile in branch_tiles(app) for url in tile.value]
    assert len(contributions) == 3
    shares = [float(t.captions[0].split(": ")[1].split("%")[0]) for t in branch_tiles(app)]
    assert sum(shares) == pytest.approx(100, abs=2)  # each branch's share of one signed scale
    captions = " ".join(c.value for c in app.main.caption)
    assert "red raises the map, blue lowers it" in captions and "its own scale" in captions
    reading = next(m.value for m in app.markdown if m.value.startswith("Keeping only the map's area"))
    assert "the model's confidence in Egyptian cat " in reading and "top 15 % of pixels" in reading  # this picture's AD/IC
    assert "% of images" not in " ".join(m.help for m in app.metric)
    assert "IC is 100 % when the kept part scores higher, else 0 %" in captions  # one picture's AD/IC explained
    levels = app.dataframe[0].value
    assert list(levels["pixels kept"]) == ["100 %", "50 %", "15 %"]
    assert {"P(class)", "vs whole picture", "AD", "IC"} <= set(levels.columns)

    ok(toggles[0].set_value(False).run())
    finish_jobs(app)  # nothing to measure: every combination was measured already
    assert image_urls(app)[0] != full_map
    assert [t.captions[0].split(":")[0] for t in branch_tiles(app)] == [
        "fine detail (blocks.2, 28×43) (off)", "parts (blocks.4, 14×22)", "whole object (blocks.6, 7×11)"
    ]
    assert [url for tile in branch_tiles(app) for url in tile.value] == contributions  # terms do not depend on toggles
    assert {m.label: m.value for m in app.metric} != metrics
    changed = {m.label: m.delta for m in app.metric if m.delta}
    assert changed  # compared with all branches on
    assert not [d for d in changed.values() if d.lstrip("+-").split(" ")[0] in ("0", "0.0")]  # nothing changed: no arrow

    for toggle in [t for t in app.toggle if t.key.startswith("branch-")][1:]:
        toggle.set_value(False)
    ok(app.run())
    assert "All branches are off" in app.warning[0].value


def test_a_map_left_nearly_flat_by_the_branches_that_are_on_says_so(app, monkeypatch):
    from tame_core.studio import ablation

    pick_sample(app)
    ok(open_page(app, "branches"))
    assert not [w for w in app.warning if "nearly flat" in w.value]
    shares = {"value": [0.01, 0.02, 0.97]}  # as a head that leans on its deepest branch
    monkeypatch.setattr(ablation.BranchTerms, "share", lambda self: shares["value"])
    toggle = next(t for t in app.toggle if t.key.startswith("branch-") and "blocks.6" in t.label)
    ok(toggle.set_value(False).run())
    assert "move only 3% of this map: it is nearly flat" in app.warning[0].value


def test_deletion_curves_are_drawn_with_their_auc(app):
    pick_sample(app)
    open_page(app, "curves")
    fills = (app.selectbox(key="curve_fill_deletion"), app.selectbox(key="curve_fill_insertion"))
    assert [box.value for box in fills] == ["mean", "blur"] and list(fills[0].options) == ["mean", "black", "blur"]  # RISE's
    ok(app.select_slider(key="curve_steps").set_value(10).run())
    finish_jobs(app)
    ok(app)
    assert len(app.get("plotly_chart")) == 2
    table = app.dataframe[0].value
    assert list(table["method"]) == ["tame"]
    aucs = [float(table[f"{mode} AUC ({direction} is better)"][0]) for mode, direction in (("deletion", "lower"), ("insertion", "higher"))]
    assert all(0 <= auc <= 1 for auc in aucs)
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
    captions = [i.captions[0] for i in app.main.get("image") if i.captions and ":" in i.captions[0]]
    assert captions[0].startswith("tame: ") and captions[0].endswith("1 forward / 0 backward")
    assert captions[1].startswith("gradcam: ") and captions[1].endswith("1 forward / 1 backward")
    table = app.dataframe[0].value
    assert list(table["method"]) == ["tame", "gradcam"]
    assert list(table["forward passes"]) == [1, 1] and list(table["backward passes"]) == [0, 1]
    assert all(t.startswith("median of ") for t in table["timing"])
    assert list(table.columns)[:2] == ["method", "× TAME time"] and table["× TAME time"][0] == 1.0
    assert not table[["× TAME time", "ms"]].isna().any().any()  # numbers, never None
    job = app.session_state["workspace"].jobs["compare"]

    ok(app.multiselect(key="compare_methods").set_value(["gradcam", "xgradcam"]).run())
    finish_jobs(app)
    again = app.session_state["workspace"].jobs["compare"]
    assert again is not job and [r.method for r in again.records] == ["xgradcam"]  # the others were kept
    assert list(app.dataframe[0].value["method"]) == ["tame", "gradcam", "xgradcam"]


def test_long_methods_wait_for_a_click_with_their_estimate_and_stop_at_the_next_forward(app):
    pick_sample(app)
    open_page(app, "compare")
    finish_jobs(app)  # the quick default comparison methods start by themselves
    ok(app.multiselect(key="compare_methods").set_value(["rise"]).run())
    start = app.button(key="compare_start")
    # RISE's 4,000 masks, and the 2 TAME runs on each side that time it against TAME
    assert start.label.startswith("Run rise: ≈ ") and start.label.endswith("(4,005 forward passes)")
    defaults = app.session_state["workspace"].jobs["compare"]
    ok(start.click().run())
    job = app.session_state["workspace"].jobs["compare"]
    assert job is not defaults  # nothing ran before the click
    deadline = time.monotonic() + 120
    while job.forwards < 32 and job.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.running
    ok(app.run())
    ok(app.button(key="stop-compare").click().run())
    assert not job.running, "RISE ignored Stop"
    assert job.state is JobState.STOPPED and job.forwards_after_stop <= 1  # counted: a busy machine cannot fail it
    assert "stopped" in app.warning[0].value and "after you asked" in app.warning[0].value  # on the very next screen
    assert app.button(key="compare_start").label.startswith("Run rise")  # offered again, not restarted


def test_a_job_whose_session_stops_polling_stops_itself(app):
    pick_sample(app)
    open_page(app, "compare")
    finish_jobs(app)
    ok(app.multiselect(key="compare_methods").set_value(["rise"]).run())
    app.session_state["workspace"].orphan_after = 2.0  # the app's ORPHAN_AFTER_S, shortened for the test
    ok(app.button(key="compare_start").click().run())
    job = app.session_state["workspace"].jobs["compare"]
    assert job.running  # and now nobody reruns the page: no heartbeat
    assert job.wait(10) and job.state is JobState.STOPPED
    assert job.stop_reason == "nobody watched it for 2 s"


def test_demo_mode_presents_the_curated_set_without_job_controls(app):
    from tame_core.studio import DEMO, load_sample

    ok(open_page(app, "demo"))
    assert app.markdown[0].value.startswith("## Cup of coffee: the model sees **espresso**")
    assert any("stSidebar" in h.value and "display: none" in h.value for h in app.get("html"))  # no technical sidebar
    assert [link.proto.label for link in app.get("page_link")] == ["Leave demo mode"]  # the way out without it
    assert app.main.get("image")[1].captions[0] == "Where it looks for espresso"  # no class index
    runners_up = [m.value for m in app.markdown if m.value.startswith("Runners-up: ")]
    assert all(int(p) > 1 for line in runners_up for p in re.findall(r"\((\d+)%\)", line))  # no "0 %" runner-up
    assert not [b for b in app.button if b.key and b.key.startswith("stop-")] and not app.get("progress")
    titles = []
    for _ in DEMO:
        titles.append(app.markdown[0].value)
        ok(app.button(key="demo_next").click().run())
        assert not app.get("progress") and not [b for b in app.button if b.key and b.key.startswith("stop-")]
    names = app.session_state["model"].class_names
    for key, title in zip(DEMO, titles):  # each one predicted as its stated class
        assert title.startswith(f"## {DEMO[key].title}: the model sees **{names[DEMO[key].expected]}**"), title
    finish_jobs(app)
    assert all(app.session_state["workspace"].cached(app.session_state["model"], load_sample(k).digest) for k in DEMO)
    ok(app.button(key="demo_back").click().run())
    assert app.markdown[0].value.startswith("## Chelsea the cat: the model sees **Egyptian cat**")
    shown = image_urls(app)[1]
    ok(app.get("button_group")[0].set_value("Most important quarter").run())
    assert image_urls(app)[1] != shown and "The 25% of the picture its map ranks highest" in app.main.get("image")[1].captions[0]


def test_demo_mode_can_present_the_users_own_pictures(app, sample_images):
    open_page(app, "explain")
    files = [(f"{name}.png", png(sample_images[name]), "image/png") for name in ("rocket", "coffee")]
    ok(app.file_uploader(key="uploads").set_value(files).run())
    assert not [h for h in app.get("html") if "stSidebar" in h.value]  # the sidebar is hidden on the demo page only
    ok(open_page(app, "demo"))
    ok(app.button(key="demo_next").click().run())  # the curated set, picture 2
    ok(app.radio(key="demo_source").set_value("My pictures").run())
    assert app.markdown[0].value.startswith("## rocket.png: the model sees **")
    assert "Picture 1 of 2." in [c.value for c in app.caption]  # another set opens at its first picture
    ok(app.multiselect(key="demo_mine").set_value([app.multiselect(key="demo_mine").options[1]]).run())
    assert app.markdown[0].value.startswith("## coffee.png: the model sees **espresso**")
    ok(app.button(key="demo_next").click().run())
    assert app.markdown[0].value.startswith("## coffee.png")  # a set of one


def test_a_head_that_cannot_load_gives_an_error_not_a_traceback(app, tmp_path):
    app.sidebar.selectbox(key="head_source").set_value("file").run()
    app.sidebar.text_input(key="head_path").input(str(tmp_path / "missing.safetensors")).run()
    assert not app.exception
    assert app.sidebar.error[0].value == "Cannot load the model: no head checkpoint at missing.safetensors"  # no server path
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
    ok(app.number_input(key="train_epochs_little-data").set_value(1).run())
    ok(app.button(key="train_start").click().run())
    job = app.session_state["workspace"].jobs["train"]
    assert job.wait(600) and job.state is JobState.DONE, job.error
    ok(app.run())
    assert job.result == app.session_state["session_folder"].heads / "tiny.safetensors" and job.result.is_file()
    assert app.success[0].value.startswith(f"Saved {job.result}")
    assert len(app.get("plotly_chart")) == 1
    app.text_input(key="push_repo").input("team/trained-in-app").run()
    assert any("the repo is public" in c.value for c in app.caption)  # said before anything is uploaded
    app.checkbox(key="push_private").check().run()
    assert not any("the repo is public" in c.value for c in app.caption)
    app.checkbox(key="push_private").uncheck().run()
    ok(app.button(key="push").click().run())
    assert "team/trained-in-app" in app.success[1].value
    assert set(fake_hub.resolve("team/trained-in-app", "main")[1]) == {"head.safetensors", "head.json", "README.md"}


def loss_steps(at: AppTest) -> list[int]:
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    return figure["data"][0]["x"]


@pytest.mark.slow
def test_train_page_stop_and_resume_keep_the_loss_history_and_say_what_happened(app, tmp_path):
    data = noise_folder(tmp_path / "images", 8)
    open_page(app, "train")
    app.text_input(key="train_folder").input(str(data)).run()
    app.text_input(key="train_name").input("resumable").run()
    app.select_slider(key="train_batch").set_value(4).run()
    ok(app.number_input(key="train_epochs_little-data").set_value(3).run())  # 2 steps an epoch, 6 in all
    assert app.button(key="train_start").proto.type == "primary"  # nothing to resume yet
    ok(app.button(key="train_start").click().run())
    job = app.session_state["workspace"].jobs["train"]
    deadline = time.monotonic() + 300
    while job.running and not any("loss" in r for r in job.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    events = [r.get("event") for r in job.records]
    assert events.index("phase") < events.index("start")  # what the first seconds are spent on is reported
    ok(app.run())
    ok(app.button(key="stop-train").click().run())
    assert job.wait(60) and job.state is JobState.STOPPED
    ok(app.run())
    done = loss_steps(app)
    assert done and done == list(range(1, len(done) + 1)) and len(done) < 6
    assert not app.success  # a stopped run is not "Saved"
    assert app.info[0].value.startswith(f"Stopped at step {len(done)} of 6.")
    assert not [w for w in app.warning if "a new run replaces it" in w.value]  # not about our own run
    assert app.button(key="train_resume").proto.type == "primary" and app.button(key="train_start").proto.type == "secondary"
    assert "**ce**: how badly the classifier misses the class" in " ".join(c.value for c in app.caption)

    ok(app.button(key="train_resume").click().run())
    resumed = app.session_state["workspace"].jobs["train"]
    assert resumed is not job and resumed.wait(300) and resumed.state is JobState.DONE, resumed.error
    ok(app.run())
    assert loss_steps(app) == [1, 2, 3, 4, 5, 6]  # steps 1..n kept across the resume
    saved = app.session_state["session_folder"].heads / "resumable.safetensors"
    assert app.success[0].value.startswith(f"Saved {saved}") and saved.is_file()


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
    start = app.button(key="eval_start")
    per_image = 1 + 1 + 3 + 14 + 2 * 11  # clean forward, TAME, AD/IC levels, ROAD orders x levels, curve points
    label = f"({2 * per_image} forward passes + {2 * 14} imputed pictures)"  # ROAD imputes 14 pictures per image
    assert start.label.startswith("Evaluate 2 images: ") and start.label.endswith(label)
    ok(start.click().run())
    finish_jobs(app)
    ok(app)
    table = app.dataframe[0].value
    assert list(table["method"]) == ["tame"] and list(table["images"]) == [2]
    assert {"AD100 ↓", "IC100 ↑", "deletion_auc ↓", "insertion_auc ↑", "ms_per_image ↓", "× TAME time"} <= set(table.columns)
    assert [b.label for b in app.get("download_button")] == ["Results (.csv)", "Results (.json)", "Per image (.csv)"]
    assert list(app.dataframe[2].value["image"]) == ["chelsea.png", "rocket.png"]
    assert "Evaluate two methods or more to compare them image by image." in [c.value for c in app.caption]


def test_evaluate_page_shows_each_image_and_the_paired_comparison(app, tmp_path):
    data = noise_folder(tmp_path / "images", 3)
    ok(open_page(app, "evaluate"))
    app.text_input(key="eval_folder").input(str(data)).run()
    app.multiselect(key="eval_methods").set_value(["tame", "gradcam"]).run()
    ok(app.select_slider(key="eval_steps").set_value(10).run())
    ok(app.button(key="eval_start").click().run())
    finish_jobs(app)
    ok(app)
    report = app.session_state["workspace"].jobs["evaluate"].result
    for means in app.dataframe[:2]:  # a time too short to mean anything is a dash, never an empty "None" cell
        assert not means.value.isna().any().any(), means.value
    per_image = app.dataframe[2].value
    assert list(zip(per_image["image"], per_image["method"])) == [
        (f"img{i}.png", m) for i in range(3) for m in ("tame", "gradcam")
    ]
    assert all(uri.startswith("data:image/png;base64,") for uri in [*per_image["picture"], *per_image["map"]])
    assert list(per_image["AD100 ↓"]) == pytest.approx([row["AD100"] for row in report.per_image()])
    assert app.selectbox(key="eval_compare_a-tame-gradcam").value == "tame"
    assert app.selectbox(key="eval_compare_b-tame-gradcam").value == "gradcam"
    table = app.dataframe[3].value
    compared = {row["metric"]: row for row in report.compare("tame", "gradcam")}
    assert list(table["metric"])[:2] == ["AD100 ↓", "IC100 ↑"]
    assert list(table["mean difference"]) == [compared[m.split()[0]]["mean"] for m in table["metric"]]
    assert set(table["verdict"]) <= {"better", "worse", "within noise", "larger", "smaller"}  # larger/smaller: the area
    assert app.get("plotly_chart")
    shown = [e.value for kind in ("markdown", "caption", "info", "subheader") for e in app.main.get(kind)]
    assert any("“Within noise” means" in text for text in shown)
    cells = [*per_image["image"], *per_image["method"], *table["metric"], *table["verdict"]]
    assert not [text for text in [*shown, *cells] if "None" in str(text) or "nan" in str(text)]
    ok(app.selectbox(key="eval_compare_a-tame-gradcam").set_value("gradcam").run())
    assert app.info[0].value == "Pick two different methods."
    ok(app.selectbox(key="eval_compare_b-tame-gradcam").set_value("tame").run())
    flipped = app.dataframe[3].value
    assert list(flipped["mean difference"]) == [compared[m.split()[0]]["mean"] * -1 for m in flipped["metric"]]


def test_heads_from_an_upload_or_the_hub(app, fake_hub, random_head_path):
    app.sidebar.selectbox(key="head_source").set_value("upload").run()
    assert app.info[0].value == "No model to explain with: choose a head in the sidebar."
    app.file_uploader(key="head_upload").set_value(("junk.safetensors", b"junk", "application/octet-stream")).run()
    assert not app.exception and app.sidebar.error[0].value.startswith("junk.safetensors: not a readable safetensors file")
    head = random_head_path.read_bytes()
    tampered = bytearray(head)
    tampered[-64:] = bytes(b ^ 0xFF for b in tampered[-64:])  # 64 flipped bytes in the last tensor's data
    app.file_uploader(key="head_upload").set_value(("tampered.safetensors", bytes(tampered), "application/octet-stream")).run()
    assert not app.exception and "do not match the SHA-256 recorded inside it" in app.sidebar.error[0].value
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


@pytest.fixture
def unfinished_head(tmp_path, lite0) -> Path:
    """A head whose card says its training stopped at step 40 of 400 (what a stopped run saves)."""
    from tame_core import TAMEHead, save_head
    from tame_core.card import metadata_for
    from tame_core.taps import check_layers

    channels = [info.channels for info in check_layers(lite0, lite0.default_layers)]
    head = TAMEHead(channels, lite0.num_classes).eval()
    training = {"finished": False, "steps": 40, "total_steps": 400}
    path = tmp_path / "heads" / "half_trained.safetensors"
    path.parent.mkdir()
    save_head(head, metadata_for(head, lite0, lite0.default_layers, training=training), path)
    return path


def test_a_head_whose_training_did_not_finish_says_so(app, unfinished_head):
    assert not app.sidebar.warning  # the test head's card says nothing about its training
    app.sidebar.selectbox(key="head_source").set_value("file").run()
    ok(app.sidebar.text_input(key="head_path").input(str(unfinished_head)).run())
    assert [w.value for w in app.sidebar.warning] == [
        "This head's training did not finish (stopped at step 40 of 400): its maps may be weak."
    ]
    ok(app.sidebar.selectbox(key="head_source").set_value("bundled").run())
    assert not app.sidebar.warning


def test_a_head_typed_as_its_card_loads_and_errors_name_no_server_path(app, unfinished_head):
    app.sidebar.selectbox(key="head_source").set_value("file").run()
    ok(app.sidebar.text_input(key="head_path").input(str(unfinished_head.with_suffix(".json"))).run())
    assert app.session_state["model"].choice.head == str(unfinished_head)  # the card's head, loaded
    card_alone = unfinished_head.with_name("card_alone.json")
    card_alone.write_bytes(unfinished_head.with_suffix(".json").read_bytes())
    for typed, message in (
        (card_alone, "no head checkpoint at card_alone.safetensors (card_alone.json is only its card: the head's "
                     "weights are the .safetensors file)"),
        (unfinished_head.with_name("missing.json"), "no head checkpoint at missing.safetensors"),
    ):
        app.sidebar.text_input(key="head_path").input(str(typed)).run()
        assert not app.exception
        assert app.sidebar.error[0].value == f"Cannot load the model: {message}"
        shown = [e.value for kind in ("error", "info", "caption", "warning") for e in app.get(kind)]
        assert not [text for text in shown if str(unfinished_head.parent) in text]  # no server path anywhere
