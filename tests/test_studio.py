"""tame_core.studio: the explorer app's logic, tested without Streamlit."""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core.errors import CheckpointError, ClassError, ImageLoadError, LayerError
from tame_core.head import TAMEHead
from tame_core.studio import (
    Job,
    JobState,
    LoadedModel,
    ModelChoice,
    Workspace,
    default_choice,
    load_model,
    load_sample,
    read_upload,
    render,
    store_uploaded_head,
)
from tame_core.studio import images as studio_images


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(explainer, random_head_path) -> LoadedModel:
    return LoadedModel(ModelChoice(head=str(random_head_path)), explainer)


# --- pictures ---------------------------------------------------------------------------------------
def test_upload_and_sample_of_the_same_pixels_share_a_digest(sample_images):
    uploaded = read_upload("cat.png", encode(sample_images["chelsea"]))
    sample = load_sample("chelsea")
    assert uploaded.pixels.shape == (300, 451, 3) and uploaded.pixels.dtype == np.uint8
    assert uploaded.digest == sample.digest
    assert (uploaded.name, uploaded.source, sample.source) == ("cat.png", "upload", "sample")
    assert max(uploaded.thumbnail.shape[:2]) == studio_images.THUMBNAIL_SIDE
    assert read_upload("other.png", encode(sample_images["coffee"])).digest != uploaded.digest


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.jpg", b"", "empty.jpg: empty file"),
        ("notes.jpg", b"these are my notes, not a photo\n" * 10, "notes.jpg: not an image"),
        ("cut.jpg", None, "cut.jpg: corrupt or truncated"),
    ],
)
def test_bad_uploads_raise_one_line_errors_naming_the_file(sample_images, name, data, message):
    if data is None:
        data = encode(sample_images["coffee"], "JPEG")[:2000]
    with pytest.raises(ImageLoadError) as caught:
        read_upload(name, data)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's calling card)."""
    data = bytearray(encode(np.zeros((2, 2, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_pictures_with_too_many_pixels_are_refused_before_decoding():
    with pytest.raises(ImageLoadError, match=r"^huge\.png: .*400 megapixels, over the 89-megapixel limit"):
        read_upload("huge.png", png_claiming(20000, 20000))


def test_upload_over_the_size_limit_is_refused_before_decoding():
    with pytest.raises(ImageLoadError, match=r"big\.png: 2\.0 MB is over the 1 MB upload limit"):
        read_upload("big.png", b"\0" * (2 * 2**20), max_mb=1)


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "RGBA", "P", "LA"])
def test_unusual_modes_become_rgb(mode, sample_images):
    picture = Image.fromarray(sample_images["astronaut"][:64, :96])
    if mode == "I;16":
        picture = Image.fromarray((np.asarray(picture.convert("L"), dtype=np.uint16) * 257))
    else:
        picture = picture.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    image = read_upload(f"odd.{fmt.lower()}", buffer.getvalue())
    assert image.pixels.shape == (64, 96, 3) and image.pixels.dtype == np.uint8


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = read_upload("blink.gif", buffer.getvalue())
    assert image.pixels.shape == (30, 40, 3)
    assert image.pixels[..., 0].mean() > 200 and image.pixels[..., 2].mean() < 50


def test_large_pictures_are_downscaled_keeping_the_aspect_ratio():
    wide = np.random.default_rng(0).integers(0, 256, (500, 3000, 3), dtype=np.uint8)
    image = read_upload("wide.png", encode(wide))
    assert image.size == (171, studio_images.MAX_SIDE)
    assert image.original_size == (500, 3000)


# --- jobs -------------------------------------------------------------------------------------------
def test_job_reports_progress_records_and_result():
    release = threading.Event()

    def work(context):
        context.progress(0.5, "half way")
        context.record({"step": 1})
        release.wait(5)
        context.record({"step": 2})
        return "finished"

    job = Job("demo", work).start()
    deadline = time.monotonic() + 5
    while job.progress < 0.5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.running and job.message == "half way" and job.records == [{"step": 1}]
    release.set()
    assert job.wait(5)
    assert (job.state, job.result, job.progress, job.error) == (JobState.DONE, "finished", 1.0, None)
    assert job.records == [{"step": 1}, {"step": 2}]


def test_a_running_job_estimates_what_is_left_from_its_own_rate():
    steps = [threading.Event() for _ in range(3)]

    def work(context):
        steps[0].wait(5)  # setup: not part of the rate
        context.progress(0.1, "started")
        steps[1].wait(5)
        context.progress(0.4, "a third of the rest")
        steps[2].wait(5)

    job = Job("estimate", work).start()
    time.sleep(0.6)
    assert job.remaining is None  # no progress yet
    steps[0].set()
    time.sleep(1.2)
    assert job.remaining is None  # a second in, but nothing more done since the first progress
    steps[1].set()
    deadline = time.monotonic() + 5
    while job.progress < 0.4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.remaining == pytest.approx(1.2 / 0.3 * 0.6, rel=0.35)  # 0.3 done in ≈ 1.2 s, 0.6 to go
    steps[2].set()
    assert job.wait(5) and job.remaining is None


def test_job_stops_at_its_next_check_and_keeps_its_records():
    started = threading.Event()

    def work(context):
        for step in range(10_000):
            context.record(step)
            started.set()
            context.check_stop()
            threading.Event().wait(0.005)
        return "never"

    job = Job("loop", work).start()
    started.wait(5)
    job.stop()
    assert job.wait(5)
    assert job.state is JobState.STOPPED and job.result is None
    assert 0 < len(job.records) < 10_000


def test_the_app_shares_cpu_threads_between_its_threads():
    from tame_core.studio.jobs import share_cpu_between_threads

    before = torch.get_num_threads()
    try:
        assert share_cpu_between_threads(2) == 1 and torch.get_num_threads() == 1  # a 2-core machine: one each
        assert share_cpu_between_threads(16) == 8 and torch.get_num_threads() == 8
        assert share_cpu_between_threads(1) == 1
    finally:
        torch.set_num_threads(before)


def test_the_server_keeps_its_libraries_out_of_full_collections():
    """A full collection walked every imported object, about 300 ms holding the GIL after each rerun; the
    server freezes what is alive at start-up, and Streamlit no longer forces a collection per run."""
    import gc
    import tomllib
    from pathlib import Path

    from tame_core.studio import freeze_imported_objects

    was_frozen = gc.get_freeze_count()
    alive = [[]]  # a container the collector tracks
    try:
        frozen = freeze_imported_objects()
        assert frozen == gc.get_freeze_count() > was_frozen
        assert not any(obj is alive for obj in gc.get_objects())  # out of every generation's walk
        later = [[]]
        assert any(obj is later for obj in gc.get_objects())  # what comes after is collected as usual
    finally:
        gc.unfreeze()
    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


def test_job_failures_become_one_line_errors():
    def user_error(context):
        raise ClassError("unknown class 'dgo'; did you mean 'dog'?")

    def bug(context):
        raise RuntimeError("oops\nsecond line")

    first, second = Job("a", user_error).start(), Job("b", bug).start()
    assert first.wait(5) and second.wait(5)
    assert first.state is JobState.FAILED and first.error == "unknown class 'dgo'; did you mean 'dog'?"
    assert second.state is JobState.FAILED and second.error == "RuntimeError: oops second line"
    with pytest.raises(RuntimeError, match="already started"):
        first.start()


# --- models -----------------------------------------------------------------------------------------
def test_default_choice_is_the_bundled_head_unless_tame_head_is_set(monkeypatch, random_head_path):
    monkeypatch.delenv("TAME_HEAD", raising=False)
    assert default_choice() == ModelChoice(head=None, backbone=None, revision=None, device="cpu")
    assert default_choice().head_file().name == "efficientnet_lite0.safetensors"
    monkeypatch.setenv("TAME_HEAD", str(random_head_path))
    assert default_choice().head == str(random_head_path)


def test_hub_choices_are_recognised_and_described():
    choice = ModelChoice(head="someone/lite0-head", revision="v1")
    assert choice.is_hub and choice.head_file() is None and choice.fingerprint() is None
    assert choice.describe() == "Hub someone/lite0-head@v1 on its backbone (cpu)"


def test_loaded_model_explains_and_its_key_follows_the_head_file(tmp_path, lite0, random_head_path):
    copy = tmp_path / "head.safetensors"
    copy.write_bytes(random_head_path.read_bytes())
    (tmp_path / "head.json").write_text(random_head_path.with_suffix(".json").read_text())
    choice = ModelChoice(head=str(copy))
    loaded = load_model(choice)
    assert loaded.layers == list(lite0.default_layers) and len(loaded.class_names) == 1000
    assert loaded.explain(np.zeros((64, 80, 3), np.uint8)).maps.shape == (1, 1, 224, 280)
    before = choice.fingerprint()
    os.utime(copy, ns=(before[0] + 10**9, before[0] + 10**9))
    assert choice.fingerprint() != before
    assert LoadedModel(choice, loaded.explainer, choice.fingerprint()).tag != loaded.tag


def test_uploaded_heads_are_stored_by_content_and_checked(tmp_path, random_head_path):
    data = random_head_path.read_bytes()
    first = store_uploaded_head("mine.safetensors", data, tmp_path)
    assert first == store_uploaded_head("again.safetensors", data, tmp_path)
    assert load_model(ModelChoice(head=str(first))).explainer.head.num_classes == 1000
    with pytest.raises(CheckpointError, match=r"^head\.pt: a head upload must be a \.safetensors file$"):
        store_uploaded_head("head.pt", data, tmp_path)
    with pytest.raises(CheckpointError, match=r"^junk\.safetensors: "):
        store_uploaded_head("junk.safetensors", b"not a safetensors file at all", tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # the junk did not stay


# --- workspace --------------------------------------------------------------------------------------
class CountingModel(LoadedModel):
    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model.choice, model.explainer)
        self.runs = 0

    def explain(self, pixels):
        self.runs += 1
        return super().explain(pixels)


def test_explanations_are_cached_per_image_and_switches_need_the_head_only(model, explainer):
    counting = CountingModel(model)
    ws = Workspace()
    image = ws.add(load_sample("chelsea"))
    base = ws.explanation(counting, image)
    tabby = explainer.backbone.class_index("tabby")
    switched = ws.view(counting, image, tabby)
    masked = ws.view(counting, image, tabby, (True, False, True))
    assert counting.runs == 1
    direct = explainer.explain(image.pixels, classes="tabby", branch_mask=(True, False, True))
    torch.testing.assert_close(masked.maps, direct.maps)
    assert int(switched.classes[0, 0]) == tabby != int(base.classes[0, 0])
    assert not torch.allclose(switched.maps, base.maps)
    assert not torch.allclose(masked.maps, switched.maps)
    assert ws.view(counting, image) is base  # no class, all branches: the cached explanation itself


def test_each_view_change_is_one_fuse_of_the_head(model, explainer, monkeypatch):
    fuses = []
    fuse = TAMEHead.fuse
    monkeypatch.setattr(TAMEHead, "fuse", lambda head, *args, **kwargs: fuses.append(1) or fuse(head, *args, **kwargs))
    ws = Workspace()
    image = ws.add(load_sample("chelsea"))
    base = ws.explanation(model, image)
    tabby = explainer.backbone.class_index("tabby")
    counts = {}
    for change, (class_index, mask) in {
        "class and mask": (tabby, (True, False, True)),
        "class": (tabby, None),
        "mask": (None, (False, True, True)),
        "mask, all on": (tabby, (True, True, True)),
        "nothing": (None, (True, True, True)),
    }.items():
        fuses.clear()
        view = ws.view(model, image, class_index, mask)
        counts[change] = len(fuses)
    assert counts == {"class and mask": 1, "class": 1, "mask": 1, "mask, all on": 1, "nothing": 0}
    assert view is base
    both = ws.view(model, image, tabby, (True, False, True))
    torch.testing.assert_close(both.maps, base.with_branches((True, False, True)).with_classes(tabby).maps, atol=0, rtol=0)


def test_workspace_keeps_choices_and_evicts_old_explanations(model):
    ws = Workspace(max_explanations=2)
    pictures = [ws.add(load_sample(key)) for key in ("chelsea", "coffee", "rocket")]
    assert ws.current == pictures[-1].digest and list(ws.images) == [p.digest for p in pictures]
    ws.add(pictures[0])
    assert len(ws.images) == 3 and ws.current == pictures[0].digest
    for picture in pictures:
        ws.explanation(model, picture)
    assert ws.cached(model, pictures[0].digest) is None and ws.cached(model, pictures[2].digest) is not None
    top = ws.chosen_class(model, pictures[1])
    assert top == int(ws.explanation(model, pictures[1]).classes[0, 0])
    ws.choose_class(model, pictures[1], 7)
    assert ws.chosen_class(model, pictures[1]) == 7
    assert ws.branch_mask(model) == (True, True, True)
    ws.set_branch_mask(model, [1, 0, 1])
    assert ws.branch_mask(model) == (True, False, True)
    with pytest.raises(LayerError, match=r"^branch mask has 1 flag but the head has 3 branches \(blocks.2, blocks.4, blocks.6\)$"):
        ws.set_branch_mask(model, (True,))
    ws.clear()
    assert not ws.images and ws.current is None and ws.cached(model, pictures[2].digest) is None


def test_precompute_fills_the_cache_in_the_background(model):
    ws = Workspace()
    samples = [load_sample("chelsea"), load_sample("coffee")]
    job = ws.start_job("demo", "demo", lambda context: ws.precompute(model, samples, context), tag="t")
    assert job.wait(60) and job.result == 2
    assert all(ws.cached(model, s.digest) is not None for s in samples)
    assert ws.job_for("demo", "t") is job and ws.job_for("demo", "other") is None


# --- render -----------------------------------------------------------------------------------------
def test_rendering_and_download_files(model, explainer):
    image = load_sample("coffee")
    explanation = Workspace().explanation(model, image)
    rows = render.prediction_rows(explanation)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows == sorted(rows, key=lambda r: -r["probability"]) and rows[0]["index"] == int(explanation.classes[0, 0])
    saliency = render.saliency(explanation)
    assert saliency.shape == image.size and 0.0 <= saliency.min() and saliency.max() <= 1.0
    assert np.array_equal(np.load(io.BytesIO(render.npy_bytes(saliency))), saliency)
    overlaid = render.overlay_image(image.pixels, saliency, 0.4, "viridis")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render.png_bytes(overlaid)))), overlaid)
    assert np.array_equal(render.overlay_image(image.pixels, saliency, 0.0), image.pixels)
    assert render.class_label(281, explainer.backbone.class_names) == "tabby (281)"
    assert render.file_stem("My photo (1).JPG") == "My_photo_1" and render.file_stem("...") == "image"


def test_colour_scales_signed_colours_and_the_most_salient_quarter():
    from tame_core.maps import colorize

    bar = render.colour_scale(("0 (low)", "0.5", "1 (high)"), "viridis")
    assert bar.ndim == 3 and bar.shape[1] == 400 and render.colour_scale(("0 (low)", "0.5", "1 (high)"), "viridis") is bar
    ends = colorize(np.array([[0.0, 1.0]]), "viridis")[0]
    assert np.array_equal(bar[5, 20], ends[0]) and np.array_equal(bar[5, 379], ends[1])  # low on the left
    signed = render.signed_colorize(np.array([[-2.0, 0.0, 2.0, 5.0]]), 2.0)[0]
    assert signed.tolist() == [[33, 102, 172], [247, 247, 247], [178, 24, 43], [178, 24, 43]]  # clipped beyond the scale
    pixels = np.full((4, 8, 3), 200, dtype=np.uint8)
    ramp = np.arange(32, dtype=np.float32).reshape(4, 8)
    shown = render.most_salient(pixels, ramp, 0.25)
    assert (shown[..., 0] == 200).sum() == 8 and (shown[..., 0] == 200)[3].all()  # the top quarter, bright
    over = render.signed_overlay(pixels, np.zeros((2, 4), dtype=np.float32), 1.0, alpha=1.0)
    assert over.shape == pixels.shape and (over == 247).all()  # zero terms: white


def test_layer_choices_label_each_tappable_layer_with_channels_and_map_size():
    from tame_core.studio.training import layer_choices

    labels, defaults = layer_choices("efficientnet_lite0")
    assert defaults == {"little-data": ["blocks.4", "blocks.6", "bn2"], "paper": ["blocks.2", "blocks.4", "blocks.6"]}
    assert labels["blocks.2"] == "blocks.2 (40 ch, 28×28)" and labels["bn2"] == "bn2 (1280 ch, 7×7)"
    assert set(defaults["paper"]) <= set(labels) and "classifier" not in labels  # the logits are not a spatial map
    assert list(layer_choices("vit_b_16")[1]) == ["paper"]  # a class token, no pooled map: no CAM start


def test_a_downloaded_maps_size_is_stated():
    from tame_core.studio import render

    assert render.map_size_note((300, 451), (300, 451)) == "float32 array 300×451 in [0, 1], the picture's size"
    assert render.map_size_note((768, 1024), (6000, 8000)) == (
        "float32 array 768×1024 in [0, 1]: the picture is 6000×8000, worked on at 768×1024; scale the map by "
        "7.81 to lay it on the original"
    )


def test_caveats_for_unlikely_classes_and_tiny_pictures():
    import numpy as np

    from tame_core.studio import render

    assert render.unlikely_class_note(0.003) == (
        "The model gives this class 0.3%: the map shows where it would look, not what it sees."
    )
    assert render.unlikely_class_note(0.01) is None
    assert render.tiny_picture_note(np.zeros((20, 31, 3), np.uint8)).startswith("This picture is only 31×20 pixels")
    assert render.tiny_picture_note(np.zeros((32, 500, 3), np.uint8)) is None


def test_time_left_times_the_later_half_so_a_slow_start_does_not_inflate_it():
    from tame_core.studio.jobs import time_left

    # first 10 % took 5 s (warm-up), then 10 % per second: 60 % done at t = 10 s
    marks = [(0.0, 0.05), (5.0, 0.1), *[(5.0 + i, 0.1 + 0.1 * i) for i in range(1, 6)]]
    assert time_left(marks, 10.0) == pytest.approx(4.0)  # 40 % left at 10 % per second
    since_start = (10.0 - 0.0) / (0.6 - 0.05) * 0.4
    assert since_start > 7  # what the rate since the first progress would have said
    assert time_left([], 3.0) is None
    assert time_left([(0.0, 0.1), (0.5, 0.3)], 0.9) is None  # under a second since the first progress
    assert time_left([(0.0, 0.10), (2.0, 0.12)], 2.0) is None  # under a twentieth of the work
    # the later half too short to time: the whole run since the first progress is used
    assert time_left([(0.0, 0.1), (2.0, 0.3)], 2.0) == pytest.approx(2.0 / 0.2 * 0.7)


def test_training_passes_count_the_clean_and_masked_forwards_and_each_extra_term():
    from tame_core.studio.costs import training_passes

    assert training_passes(100, 2) == (400, 200)  # clean + masked forward, one backward, per image and epoch
    assert training_passes(100, 1, extra_terms=1) == (300, 200)  # the destroying term: one forward and backward more
    assert training_passes(0, 5) == (0, 0)
