"""The explain API: one backbone forward, maps for any class or branch mask from the cached features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core import preprocessing
from tame_core.errors import ClassError, OptionError
from tame_core.maps import minmax_normalize, resize_maps
from tame_core.streams import explain_stream


@pytest.fixture
def forward_counter(explainer):
    calls = []
    handle = explainer.backbone.net.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


def test_one_forward_gives_logits_maps_and_top_k(explainer, sample_images, forward_counter):
    images = [sample_images["chelsea"], sample_images["coffee"]]
    result = explainer.explain(images, geometry="crop")
    assert len(forward_counter) == 1
    assert result.logits.shape == (2, 1000) and result.classes.shape == (2, 1)
    assert torch.equal(result.classes[:, 0], result.logits.argmax(1))
    assert result.maps.shape == (2, 1, 224, 224)
    flat = result.maps.flatten(2)
    torch.testing.assert_close(flat.amin(-1), torch.zeros(2, 1))
    torch.testing.assert_close(flat.amax(-1), torch.ones(2, 1))
    top = result.top_k(5)
    assert len(top) == 2 and len(top[0]) == 5 and top[0][0][0] == int(result.classes[0, 0])
    assert top[1][0][1] == explainer.backbone.class_names[top[1][0][0]]
    assert sum(p for _, _, p in top[0]) <= 1.0 and top[0][0][2] >= top[0][1][2]


def test_maps_are_the_min_max_normalised_fuser_output(explainer, sample_images):
    result = explainer.explain(sample_images["rocket"], geometry="crop")
    raw = explainer.head.fuse(result.branch_features, result.classes)
    torch.testing.assert_close(result.maps, minmax_normalize(resize_maps(raw, (224, 224))))


def test_another_class_needs_the_head_only(explainer, sample_images, forward_counter):
    result = explainer.explain(sample_images["chelsea"])
    switched = result.with_classes("tabby")
    assert len(forward_counter) == 1
    assert switched.classes.tolist() == [[281]]
    fresh = explainer.explain(sample_images["chelsea"], classes=281)
    torch.testing.assert_close(switched.maps, fresh.maps)
    assert not torch.allclose(switched.maps, result.maps) or int(result.classes[0, 0]) == 281


def test_branch_mask_needs_the_head_only(explainer, sample_images, forward_counter):
    result = explainer.explain(sample_images["astronaut"])
    masked = result.with_branches([True, False, True])
    assert len(forward_counter) == 1 and masked.branch_mask == (True, False, True)
    fresh = explainer.explain(sample_images["astronaut"], branch_mask=[True, False, True])
    torch.testing.assert_close(masked.maps, fresh.maps)
    assert (masked.maps - result.maps).abs().max() > 1e-3
    restored = masked.with_branches(None)
    torch.testing.assert_close(restored.maps, result.maps)


def test_branch_maps_are_each_branchs_term(explainer, sample_images):
    result = explainer.explain(sample_images["coffee"], geometry="crop")
    branch_maps = result.branch_maps()
    assert branch_maps.shape == (1, 1, 3, 224, 224)
    assert float(branch_maps.min()) >= 0 and float(branch_maps.max()) <= 1
    only_first = result.with_branches([True, False, False])
    # a map made from one branch alone is that branch's term plus a constant bias: same after min-max
    torch.testing.assert_close(only_first.maps[0, 0], branch_maps[0, 0, 0], atol=1e-4, rtol=0)


def test_branch_terms_and_the_bias_add_up_to_the_map(explainer, sample_images):
    result = explainer.explain(sample_images["coffee"], classes=[[281, 967]], geometry="crop")
    terms = result.branch_terms()
    assert terms.shape == (1, 2, 3, 224, 224) and float(terms.min()) < 0 < float(terms.max())  # signed
    bias = explainer.head.fuser.bias[result.classes][..., None, None]
    raw = resize_maps(explainer.head.fuse(result.branch_features, result.classes), (224, 224))
    torch.testing.assert_close(terms.sum(dim=2) + bias, raw, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.branch_maps(), minmax_normalize(terms))


def test_a_new_class_and_mask_in_one_fuse_are_both_changes_in_turn(explainer, sample_images):
    result = explainer.explain(sample_images["chelsea"])
    both = result.with_choices(classes="tabby", branch_mask="1,0,1")
    in_turn = result.with_branches([True, False, True]).with_classes("tabby")
    assert both.classes.tolist() == [[281]] and both.branch_mask == (True, False, True)
    assert torch.equal(both.maps, in_turn.maps)
    assert result.with_choices() is result
    assert result.with_choices(branch_mask=None).branch_mask is None


def test_selecting_images_keeps_their_rows_in_the_order_asked(explainer, sample_images):
    pictures = [sample_images["chelsea"], sample_images["coffee"], sample_images["rocket"]]
    batch = explainer.explain(pictures, geometry="crop", top_k=2)
    last = batch.select_images(-1)
    assert last.inputs.shape == (1, 3, 224, 224) and last.original_sizes == [pictures[2].shape[:2]]
    assert torch.equal(last.maps, batch.maps[2:]) and torch.equal(last.classes, batch.classes[2:])
    picked = batch.select_images([2, 0])
    assert picked.original_sizes == [pictures[2].shape[:2], pictures[0].shape[:2]]
    for field in ("inputs", "logits", "classes", "maps"):
        assert torch.equal(getattr(picked, field), getattr(batch, field)[[2, 0]]), field
    assert all(torch.equal(a, b[[2, 0]]) for a, b in zip(picked.branch_features, batch.branch_features))
    torch.testing.assert_close(picked.with_classes("tabby").maps, batch.with_classes("tabby").maps[[2, 0]])
    with pytest.raises(OptionError, match=r"^image index 3 is out of range: this explanation has 3 image\(s\), 0 to 2$"):
        batch.select_images(3)


def test_a_streamed_picture_is_checked_once(explainer, sample_images, monkeypatch):
    checked = []
    check = preprocessing.check_image_size
    monkeypatch.setattr(preprocessing, "check_image_size", lambda *args: checked.append(args) or check(*args))
    pictures = [sample_images["chelsea"], sample_images["coffee"], sample_images["chelsea"]]
    results = dict(explain_stream(explainer, pictures, batch_size=3))
    assert len(checked) == 3 and sorted(results) == [0, 1, 2]
    checked.clear()
    explainer.explain(pictures[:2], geometry="crop")  # the front door checks what it is given, once
    assert len(checked) == 2


def test_class_choices(explainer, sample_images):
    images = [sample_images["chelsea"], sample_images["coffee"]]
    assert explainer.explain(images, classes=["tabby", "n07920052"], geometry="crop").classes.tolist() == [[281], [967]]
    assert explainer.explain(images, classes=[[1, 2, 3], [4, 5, 6]], geometry="crop").maps.shape == (2, 3, 224, 224)
    assert explainer.explain(images, top_k=3, geometry="crop").classes.shape == (2, 3)
    with pytest.raises(ClassError, match="unknown class 'tabbby'; did you mean 'tabby'"):
        explainer.explain(images, classes="tabbby", geometry="crop")
    with pytest.raises(ClassError, match="class index 1000 is out of range"):
        explainer.explain(images, classes=1000, geometry="crop")
    with pytest.raises(ClassError, match="got 3 class choices for 2 images"):
        explainer.explain(images, classes=[1, 2, 3], geometry="crop")


def test_inputs_of_every_kind(explainer, sample_images):
    picture = np.ascontiguousarray(sample_images["chelsea"][:224, 100:324])  # model-sized: no resampling
    as_tensor = torch.from_numpy(picture).permute(2, 0, 1)
    batch = explainer.explain([Image.fromarray(picture), picture, as_tensor, as_tensor.float() / 255])
    for other in (1, 2, 3):
        torch.testing.assert_close(batch.maps[0], batch.maps[other])


def test_full_geometry_covers_the_picture(explainer, sample_images):
    picture = sample_images["coffee"]  # 400 x 600
    result = explainer.explain(picture)
    assert result.inputs.shape[-2:] == (224, 336)
    saliency = result.map_at_original()
    assert saliency.shape == (400, 600) and saliency.dtype == np.float32
    assert 0 <= saliency.min() and saliency.max() <= 1 and saliency.max() > 0.9


def test_crop_geometry_maps_back_into_the_crop_box(explainer, sample_images):
    picture = sample_images["coffee"]  # 400 x 600: the crop shows the central 350 x 350
    saliency = explainer.explain(picture, geometry="crop").map_at_original()
    assert saliency.shape == (400, 600)
    assert saliency[:, :120].max() == 0 and saliency[:, -120:].max() == 0 and saliency[:20].max() == 0
    assert saliency[30:370, 130:470].max() > 0.9


def test_explain_stream_groups_by_size_and_keeps_order(explainer, sample_images):
    pictures = [sample_images["chelsea"], sample_images["coffee"], sample_images["rocket"], sample_images["coffee"]]
    results = dict(explain_stream(explainer, pictures, batch_size=2))
    assert sorted(results) == [0, 1, 2, 3]
    single = explainer.explain(sample_images["rocket"])
    torch.testing.assert_close(results[2].maps, single.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1].maps, results[3].maps)
    assert results[0].original_sizes == [sample_images["chelsea"].shape[:2]]


def test_mixed_sizes_in_one_full_batch_say_what_to_do(explainer, sample_images):
    with pytest.raises(ValueError, match="explain them in separate batches or use geometry='crop'"):
        explainer.explain([sample_images["chelsea"], sample_images["rocket"]])


def test_autocast_gives_close_maps(explainer, sample_images):
    from tame_core import Explainer

    fast = Explainer(explainer.backbone, explainer.head, explainer.layers, explainer.metadata, amp=True)
    picture = sample_images["chelsea"]
    reference, mixed = explainer.explain(picture, geometry="crop"), fast.explain(picture, geometry="crop")
    assert torch.equal(reference.classes, mixed.classes)
    correlation = torch.corrcoef(torch.stack([reference.maps.flatten(), mixed.maps.flatten()]))[0, 1]
    assert correlation > 0.98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(explainer, random_head_path, sample_images):
    from tame_core import Explainer, load_backbone

    gpu = Explainer.load(random_head_path, backbone=load_backbone("efficientnet_lite0"), device="cuda")
    picture = sample_images["chelsea"]
    on_gpu = gpu.explain(picture, geometry="crop")
    assert on_gpu.maps.device.type == "cuda"
    torch.testing.assert_close(on_gpu.maps.cpu(), explainer.explain(picture, geometry="crop").maps, atol=2e-3, rtol=0)
