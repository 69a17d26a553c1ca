"""The Python API's edges (issue 14.8, 14.2, 11): wrong inputs are one-line TameErrors, streams of any length work."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core import load_image
from tame_core.errors import ClassError, ImageLoadError, LayerError, OptionError, TameError
from tame_core.methods import explain_with
from tame_core.streams import explain_stream


# --- images -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, message",
    [
        (5, "<image>: expected a file path, bytes or a binary file, got int"),
        (None, "<image>: expected a file path, bytes or a binary file, got NoneType"),
        (io.StringIO("text"), "<image>: the file gives str, not bytes; open it in binary mode ('rb')"),
    ],
)
def test_load_image_refuses_what_is_not_a_file(source, message):
    with pytest.raises(ImageLoadError) as info:
        load_image(source)
    assert str(info.value) == message


def test_load_image_takes_bytes_like_and_names_unreadable_paths(tmp_path, sample_images):
    buffer = io.BytesIO()
    Image.fromarray(sample_images["coffee"]).save(buffer, format="PNG")
    for source in (bytearray(buffer.getvalue()), memoryview(buffer.getvalue())):
        assert load_image(source).size == (600, 400)
    long_name = str(tmp_path / ("a" * 300 + ".png"))
    with pytest.raises(ImageLoadError, match=r"\.png: cannot read \(File name too long\)$"):
        load_image(long_name)


@pytest.mark.parametrize(
    "size, ratio", [((3000, 1), "3000"), ((20000, 1), "20000"), ((1, 3000), "3000"), ((400, 39), "10.3"), ((2241, 224), "10.004")]
)
def test_thin_image_files_are_refused_before_decoding(tmp_path, size, ratio):
    path = tmp_path / "thin.png"
    Image.new("RGB", size, (200, 10, 10)).save(path)
    assert path.stat().st_size < 4000
    width, height = size
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value) == (
        f"{path}: {width}x{height} is too thin to explain (aspect ratio {ratio}:1, over the 10:1 limit); crop it first"
    )


def test_long_sides_are_refused_and_ten_to_one_is_accepted(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("L", (20_001, 2_001)).save(wide)
    with pytest.raises(ImageLoadError, match=r"wide.png: 20001x2001 has a side over the 20000-pixel limit; downscale it first"):
        load_image(wide)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (400, 40)).save(ok)
    assert load_image(ok).size == (400, 40)


def test_in_memory_thin_pictures_are_refused_by_the_explainer(explainer):
    for picture in (np.zeros((1, 300, 3), np.uint8), Image.new("RGB", (20_000, 1)), torch.zeros(3, 2, 900)):
        with pytest.raises(ImageLoadError, match=r"too thin to explain .* crop it first"):
            explainer.explain(picture)


def test_nan_and_infinite_images_are_refused(explainer, sample_images):
    picture = sample_images["chelsea"].astype(np.float32) / 255
    picture[5, 5, 1] = np.nan
    batch = torch.rand(2, 3, 64, 64)
    batch[1, 0, 0, 0] = float("inf")
    for images in (picture, [sample_images["coffee"], picture], batch, torch.full((3, 32, 32), float("nan"))):
        with pytest.raises(ImageLoadError, match="^image holds NaN or infinite values$"):
            explainer.explain(images)


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "no images given"),
        (torch.empty(0, 3, 8, 8), "no images given (a batch tensor of 0 images)"),
        ("photo.jpg", "images must be PIL images, numpy arrays or tensors, got str"),
        (np.zeros((8, 8, 3), np.int64), "numpy image of dtype int64: give uint8 (0..255) or floats in [0, 1]"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "tensor image of dtype torch.int32: give uint8 (0..255) or floats in [0, 1]"),
    ],
)
def test_bad_image_arguments(explainer, images, message):
    with pytest.raises(ImageLoadError) as info:
        explainer.explain(images)
    assert str(info.value) == message


# --- classes, top-k, branch masks, options ------------------------------------------------------------
@pytest.mark.parametrize(
    "classes, message",
    [
        (3.5, "class must be a name or a whole-number index, got 3.5 (float)"),
        (True, "class must be a name or a whole-number index, got True (bool)"),
        (torch.tensor([3.5]), "a class tensor holds whole-number indices, (B,) or (B, K); got torch.float32 of shape (1,)"),
        ([[1, 2], [3]], "give every image the same number of classes, got [2, 1]"),
        ([[1, 2], 3.5], "class must be a name or a whole-number index, got 3.5 (float)"),
        ([[], []], "no classes chosen: give at least one class per image"),
    ],
)
def test_bad_class_choices(explainer, sample_images, classes, message):
    pictures = [sample_images["chelsea"], sample_images["chelsea"]]
    with pytest.raises(ClassError) as info:
        explainer.explain(pictures, classes=classes)
    assert str(info.value) == message


def test_class_choices_of_every_accepted_kind_agree(explainer, sample_images):
    picture = sample_images["chelsea"]
    reference = explainer.explain(picture, classes=281)
    for same in ("tabby", np.int64(281), torch.tensor(281), [281], np.array([281]), np.array(["tabby"]), [[torch.tensor(281)]]):
        assert explainer.explain(picture, classes=same).classes.tolist() == [[281]], same
    torch.testing.assert_close(explainer.explain(picture, classes=[[281, 282]]).maps[:, :1], reference.maps)


@pytest.mark.parametrize("top_k", [0, -1, 1001, 2.0, True])
def test_top_k_out_of_range(explainer, sample_images, top_k):
    with pytest.raises(ClassError, match=rf"^top_k must be a whole number from 1 to 1000, got {top_k!r}$"):
        explainer.explain(sample_images["chelsea"], top_k=top_k)


@pytest.mark.parametrize(
    "mask, message",
    [
        ([True, False], "branch mask has 2 flags but the head has 3 branches (blocks.2, blocks.4, blocks.6)"),
        ([1, 0, 1, 1], "branch mask has 4 flags but the head has 3 branches (blocks.2, blocks.4, blocks.6)"),
        ("abc", "branch mask flags must be True/False, 1/0 or on/off, got 'abc'"),
        ("1,2,0", "branch mask flags must be True/False, 1/0 or on/off, got '2' in '1,2,0'"),
        ({1, 0, 1}, "branch mask must be a list of True/False flags, one per branch, or a string like 1,0,1; got {0, 1}"),
        ([1, "x", 0], "branch mask flags must be True/False, 1/0 or on/off, got 'x'"),
        ([1, 2, 0], "branch mask flags must be True/False, 1/0 or on/off, got 2"),
    ],
)
def test_bad_branch_masks(explainer, sample_images, mask, message):
    with pytest.raises(LayerError) as info:
        explainer.explain(sample_images["rocket"], branch_mask=mask)
    assert str(info.value) == message
    explanation = explainer.explain(sample_images["rocket"])
    with pytest.raises(LayerError) as info:
        explanation.with_branches(mask)
    assert str(info.value) == message


def test_branch_masks_of_every_accepted_kind_agree(explainer, sample_images):
    explanation = explainer.explain(sample_images["rocket"])
    reference = explanation.with_branches([True, False, True])
    for same in ((1, 0, 1), np.array([True, False, True]), torch.tensor([1, 0, 1]), "1,0,1", " on, OFF ,true", ["on", "off", "on"]):
        masked = explanation.with_branches(same)
        assert masked.branch_mask == (True, False, True)
        torch.testing.assert_close(masked.maps, reference.maps)


def test_every_entry_point_reads_a_branch_mask_with_the_one_parser(explainer, sample_images):
    """The Python API, the head itself and the ``tame`` method (the CLI's ``--option tame.branches``) give
    the same LayerError line (the app's Workspace is checked in test_studio)."""
    explanation = explainer.explain(sample_images["rocket"])
    counted = "branch mask has 2 flags but the head has 3 branches"
    named = f"{counted} (blocks.2, blocks.4, blocks.6)"
    entry_points = {
        named: [
            lambda: explainer.explain(sample_images["rocket"], branch_mask="1,0"),
            lambda: explanation.with_choices(classes=281, branch_mask="1,0"),
            lambda: explain_with(explainer, explanation.inputs, [281], "tame", branches="1,0"),
        ],
        counted: [lambda: explainer.head.fuse(explanation.branch_features, branch_mask="1,0")],
    }
    for message, calls in entry_points.items():
        for call in calls:
            with pytest.raises(LayerError) as info:
                call()
            assert str(info.value) == message
    via_method = explain_with(explainer, explanation.inputs, [281], "tame", branches="on,off,on").maps
    torch.testing.assert_close(via_method[:, None], explanation.with_choices(281, (True, False, True)).maps)


def test_bad_options(explainer, sample_images):
    picture = sample_images["chelsea"]
    with pytest.raises(OptionError, match="^geometry must be one of crop, full, got 'square'$"):
        explainer.explain(picture, geometry="square")
    with pytest.raises(OptionError, match="explain them in separate batches or use geometry='crop'"):
        explainer.explain([picture, picture[:100]])
    with pytest.raises(OptionError, match="^batch_size must be a whole number of at least 1, got 0$"):
        list(explain_stream(explainer, [picture], batch_size=0))
    with pytest.raises(ClassError, match="^explain_stream takes one class for every image"):
        list(explain_stream(explainer, [picture, picture], classes=[1, 2]))
    with pytest.raises(ImageLoadError, match="^image 1 of the stream: explain_stream takes one image per item, got a batch of 2$"):
        list(explain_stream(explainer, [picture, torch.rand(2, 3, 64, 64)]))
    assert all(issubclass(kind, TameError) for kind in (OptionError, ClassError, LayerError, ImageLoadError))


# --- streams longer than one batch (issue 11) -----------------------------------------------------------
def _stream(pictures, pulled):
    for picture in pictures:
        pulled.append(1)
        yield picture


def test_explain_stream_over_several_batches_with_mixed_sizes(explainer, sample_images):
    """7 pictures of 3 sizes, batch_size 3: every position once, each map the single-image map, few waiting."""
    chelsea, coffee, rocket = (sample_images[k] for k in ("chelsea", "coffee", "rocket"))
    pictures = [chelsea[:200, :260], coffee[:240, :300], rocket[:200, :260], rocket[:300, :200],
                chelsea[50:250, 100:360], coffee[:200, :260], coffee[100:340, 200:500]]
    pulled: list[int] = []
    seen = []
    for position, explanation in explain_stream(explainer, _stream(pictures, pulled), batch_size=3):
        assert len(pulled) - len(seen) <= 3  # never more than one batch of pictures waiting
        seen.append(position)
        assert explanation.original_sizes == [pictures[position].shape[:2]]
        assert explanation.maps.shape[:2] == (1, 1)
        single = explainer.explain(pictures[position])
        torch.testing.assert_close(explanation.maps, single.maps, atol=1e-4, rtol=0)
        torch.testing.assert_close(explanation.logits, single.logits, atol=1e-3, rtol=0)
    assert sorted(seen) == list(range(7))


def test_explain_stream_keeps_stream_order_for_same_sizes(explainer, sample_images):
    pictures = [np.ascontiguousarray(sample_images["astronaut"][i * 40 : i * 40 + 224, :224]) for i in range(7)]
    results = list(explain_stream(explainer, pictures, classes="tabby", batch_size=3, geometry="crop"))
    assert [position for position, _ in results] == list(range(7))
    assert all(explanation.classes.tolist() == [[281]] for _, explanation in results)
    batch = explainer.explain(pictures, classes="tabby", geometry="crop")
    torch.testing.assert_close(torch.cat([e.maps for _, e in results]), batch.maps, atol=1e-4, rtol=0)


def test_thin_images_are_refused_by_the_app_upload_and_skipped_by_training(tmp_path):
    """One limit, applied where images are loaded: the app's uploads and the trainer's data get it too."""
    from tame_core.studio.images import read_upload
    from tame_core.training.data import readable_images

    buffer = io.BytesIO()
    Image.new("RGB", (20_000, 1)).save(buffer, format="PNG")
    with pytest.raises(ImageLoadError, match=r"^thin.png: 20000x1 is too thin to explain .* crop it first$"):
        read_upload("thin.png", buffer.getvalue())
    (tmp_path / "thin.png").write_bytes(buffer.getvalue())
    Image.new("RGB", (64, 48)).save(tmp_path / "ok.png")
    files, problems = readable_images(tmp_path)
    assert problems == [str(tmp_path / "thin.png")] and len(files) == 2
