"""Loss terms and masking order: known answers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tame_core.backbones import Backbone
from tame_core.metrics.curves import baseline_images
from tame_core.preprocessing import Preprocess
from tame_core.taps import LayerTaps
from tame_core.training import (
    LossWeights,
    area_loss,
    batch_loss,
    masked_logits,
    tame_loss,
    variation_loss,
)


def test_area_loss_known_values():
    masks = torch.tensor([0.0, 1.0, 0.25, 0.0]).view(1, 1, 2, 2)
    expected = (0.0005**0.3 * 2 + 1.0005**0.3 + 0.2505**0.3) / 4
    assert area_loss(masks).item() == pytest.approx(expected, rel=1e-6)
    assert area_loss(masks, eps=0.0, power=1.0).item() == pytest.approx(0.3125)


def test_variation_loss_single_corner_pixel():
    # [[1, 0], [0, 0]]: one vertical and one horizontal jump of 1; the 1 lies on the top row and
    # the left column, so the border sum is 2: (1 + 1 + 0.3 * 2) / (2 * 1).
    masks = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    assert variation_loss(masks).item() == pytest.approx(1.3)
    assert variation_loss(masks, border=0.0).item() == pytest.approx(1.0)


def test_variation_loss_divides_by_twice_the_batch_not_the_map_count():
    centre = torch.zeros(3, 3)
    centre[1, 1] = 1.0  # four jumps of 1, nothing on the border
    one = centre.view(1, 1, 3, 3)
    assert variation_loss(one).item() == pytest.approx(4 / 2)
    two_images = torch.stack([centre, torch.zeros(3, 3)]).view(2, 1, 3, 3)
    assert variation_loss(two_images).item() == pytest.approx(4 / 4)
    two_maps_per_image = torch.stack([centre, centre]).view(1, 2, 3, 3)  # B x K maps: K adds, B divides
    assert variation_loss(two_maps_per_image).item() == pytest.approx(8 / 2)


def test_variation_loss_constant_map_costs_only_its_border():
    masks = torch.full((1, 1, 4, 4), 0.5)
    # 4 edges of 4 pixels each at 0.25: 4.0, times 0.3, over 2.
    assert variation_loss(masks).item() == pytest.approx(0.3 * 4.0 / 2)


def test_tame_loss_combines_terms_with_the_papers_weights():
    classes = 10
    logits = torch.zeros(2, classes)  # uniform: CE = ln(10) whatever the target
    masks = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2).expand(2, 1, 2, 2)
    terms = tame_loss(logits, torch.tensor([3, 7]), masks)
    assert terms.ce.item() == pytest.approx(math.log(classes), rel=1e-6)
    assert terms.area.item() == pytest.approx((1.0005**0.3 + 3 * 0.0005**0.3) / 4, rel=1e-6)
    assert terms.tv.item() == pytest.approx(2 * 2.6 / 4)
    assert terms.loss.item() == pytest.approx(1.5 * terms.ce.item() + 2 * terms.area.item() + 0.01 * terms.tv.item(), rel=1e-6)
    custom = tame_loss(logits, torch.tensor([3, 7]), masks, LossWeights(ce=1.0, area=0.0, tv=0.0))
    assert custom.loss.item() == pytest.approx(math.log(classes), rel=1e-6)


class Probe(nn.Module):
    """A stand-in classifier that records every input it gets; class i is 'the amount of colour i'."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.features(x).mean(dim=(2, 3)) * 10


def probe_backbone() -> Backbone:
    preprocess = Preprocess(input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Backbone("probe", Probe(), preprocess, ["red", "green", "blue"], ["features"])


def test_masked_logits_raw_order_masks_before_normalising():
    backbone = probe_backbone()
    image = torch.ones(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    masked_logits(backbone, image, mask, "raw")
    seen = backbone.net.seen[-1]
    assert torch.allclose(seen[..., :4], torch.full_like(seen[..., :4], (1 - 0.5) / 0.25))
    assert torch.allclose(seen[..., 4:], torch.full_like(seen[..., 4:], (0 - 0.5) / 0.25))  # black, normalised


def test_masked_logits_normalized_order_masks_the_normalised_image():
    backbone = probe_backbone()
    image = torch.ones(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    masked_logits(backbone, image, mask, "normalized")
    seen = backbone.net.seen[-1]
    assert torch.allclose(seen[..., :4], torch.full_like(seen[..., :4], 2.0))
    assert torch.all(seen[..., 4:] == 0)  # the mean colour, not black
    with pytest.raises(ValueError, match="mask order"):
        masked_logits(backbone, image, mask, "sideways")


def test_batch_loss_masks_each_image_with_its_own_class_map():
    backbone = probe_backbone()
    images = torch.zeros(3, 3, 8, 8)
    for i in range(3):
        images[i, i] = 1.0  # image i is pure colour i, so the classifier predicts class i
    # Pre-sigmoid maps of image i for target class j: constant c[i, j] (B x B maps, 2 x 2 pixels).
    c = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 4.0], [5.0, 6.0, 1.5]])
    calls = []

    def head(features, classes):
        calls.append(classes.clone())
        return c[:, classes][:, :, None, None].expand(-1, -1, 2, 2).clone().requires_grad_()

    terms = batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images)
    assert calls[0].tolist() == [0, 1, 2]
    clean, masked = backbone.net.seen
    assert torch.allclose(clean, backbone.normalize(images))
    own = torch.sigmoid(torch.diagonal(c))
    assert torch.allclose(masked, backbone.normalize(images * own[:, None, None, None]), atol=1e-6)
    all_maps = torch.sigmoid(c)
    assert terms.area.item() == pytest.approx(((all_maps + 0.0005) ** 0.3).mean().item(), rel=1e-6)
    # constant maps: only the border term, 0.3 * (4 edges x 2 pixels) * s^2 for each of the 9 maps, over 2 x 3
    assert terms.tv.item() == pytest.approx((0.3 * 8 * (all_maps**2)).sum().item() / 6, rel=1e-5)


def test_batch_loss_top_k_masks_each_image_once_per_class():
    backbone = probe_backbone()
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0], images[0, 1] = 1.0, 0.5  # top-2: red, green
    images[1, 2], images[1, 0] = 1.0, 0.5  # top-2: blue, red
    seen_classes = []

    def head(features, classes):
        seen_classes.append(classes.tolist())
        return torch.zeros(2, len(classes), 2, 2, requires_grad=True)

    terms = batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images, top_k=2)
    assert seen_classes == [[0, 1, 2, 0]]
    masked = backbone.net.seen[1]
    assert masked.shape == (4, 3, 8, 8)  # each image twice, each time with a half mask (sigmoid(0))
    assert torch.allclose(masked, backbone.normalize(images.repeat_interleave(2, 0) * 0.5))
    assert terms.loss.requires_grad


def test_choose_targets_draws_distinct_classes_from_each_row():
    from tame_core.training.step import choose_targets

    candidates = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert torch.equal(choose_targets(candidates, None), candidates)
    assert torch.equal(choose_targets(candidates, 4), candidates)
    picks = [choose_targets(candidates, 2, torch.Generator().manual_seed(s)) for s in range(20)]
    for chosen in picks:
        assert chosen.shape == (2, 2)
        for row, options in zip(chosen.tolist(), candidates.tolist()):
            assert len(set(row)) == 2 and set(row) <= set(options)
    assert len({tuple(p.flatten().tolist()) for p in picks}) > 1  # not always the same classes
    again = choose_targets(candidates, 2, torch.Generator().manual_seed(3))
    assert torch.equal(again, picks[3])  # seeded: a resumed run draws the same


def test_batch_loss_with_one_of_the_top_k_per_image_masks_once_per_image():
    backbone = probe_backbone()
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0], images[0, 1] = 1.0, 0.5
    images[1, 2], images[1, 0] = 1.0, 0.5
    seen_classes = []

    def head(features, classes):
        seen_classes.append(classes.tolist())
        return torch.zeros(2, len(classes), 2, 2, requires_grad=True)

    batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images, top_k=2, per_image=1,
               generator=torch.Generator().manual_seed(0))
    first, second = seen_classes[0]
    assert first in (0, 1) and second in (2, 0)
    assert backbone.net.seen[1].shape == (2, 3, 8, 8)


# --- the destroying and insertion terms (Dabkowski & Gal 2017), off in the papers' recipe ----------------
def test_destroy_and_insert_terms_known_values():
    logits = torch.zeros(2, 10)  # uniform: p(target) = 0.1, CE = ln(10)
    removed = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])  # p(class 0) = 3/5, then 1/3
    masks = torch.full((2, 1, 2, 2), 0.5)
    targets = torch.tensor([0, 2])
    papers = tame_loss(logits[:, :3], targets, masks)
    assert papers.destroy is None and papers.insert is None and list(papers.logged()) == ["loss", "ce", "area", "tv"]
    both = tame_loss(logits[:, :3], targets, masks, LossWeights(destroy=2.0, insert=0.5), removed, torch.zeros(2, 3))
    assert both.destroy.item() == pytest.approx((3 / 5 + 1 / 3) / 2, rel=1e-6)
    assert both.insert.item() == pytest.approx(math.log(3.0), rel=1e-6)
    assert both.loss.item() == pytest.approx(papers.loss.item() + 2.0 * both.destroy.item() + 0.5 * math.log(3.0), rel=1e-6)
    assert list(both.logged()) == ["loss", "ce", "area", "tv", "destroy", "insert"]
    assert LossWeights().to_dict() == {"ce": 1.5, "area": 2.0, "area_eps": 0.0005, "area_power": 0.3, "tv": 0.01, "tv_border": 0.3}
    assert LossWeights(destroy=0.5).to_dict()["destroy"] == 0.5 and "insert" not in LossWeights(destroy=0.5).to_dict()


def test_the_new_terms_see_the_region_removed_to_the_mean_colour_or_pasted_on_the_blur():
    backbone = probe_backbone()
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0], images[1, 2] = 1.0, 1.0  # red, blue
    images[:, :, 2:4, 5] = 0.75  # some texture for the blur to move
    maps = torch.tensor([[0.0, 9.0, 2.0], [-1.0, 9.0, 3.0]])  # pre-sigmoid map of image i for class j, constant

    def head(features, classes):
        return maps[:, classes][:, :, None, None].expand(-1, -1, 2, 2).clone().requires_grad_()

    terms = batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images)
    assert len(backbone.net.seen) == 2 and terms.destroy is None  # off: clean and masked forwards only
    backbone.net.seen.clear()
    terms = batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images, LossWeights(destroy=1.0, insert=1.0))
    clean, masked, removed, inserted = backbone.net.seen
    own = torch.sigmoid(torch.tensor([0.0, 3.0]))[:, None, None, None]  # image 0's red map, image 1's blue map
    grey = torch.full_like(images, 0.5)  # the probe's mean colour
    assert torch.allclose(removed, backbone.normalize(images * (1 - own) + grey * own), atol=1e-6)
    blurred = baseline_images(images, "blur", torch.full((1, 3, 1, 1), 0.5))  # RISE's blur, padded with the mean colour
    assert torch.allclose(inserted, backbone.normalize(images * own + blurred * (1 - own)), atol=1e-6)
    probs = (removed.mean(dim=(2, 3)) * 10).softmax(dim=1)
    assert terms.destroy.item() == pytest.approx(float((probs[0, 0] + probs[1, 2]) / 2), rel=1e-5)
    for fill, fills in (("black", [0.0, 0.0]), ("both", [0.5, 0.0])):  # both: the mean colour in even rows, black in odd
        backbone.net.seen.clear()
        batch_loss(backbone, LayerTaps(backbone, ["features"]), head, images, LossWeights(destroy=1.0, destroy_fill=fill))
        removed = backbone.net.seen[2]
        expected = images * (1 - own) + torch.tensor(fills)[:, None, None, None] * own
        assert torch.allclose(removed, backbone.normalize(expected), atol=1e-6), fill


def test_the_destroying_fill_is_checked_and_recorded_only_when_it_differs():
    assert "destroy_fill" not in LossWeights(destroy=1.0).to_dict()  # the default: cards read as before
    assert LossWeights(destroy=1.0, destroy_fill="black").to_dict()["destroy_fill"] == "black"
    assert "destroy_fill" not in LossWeights(destroy_fill="black").to_dict()  # the term is off: its fill means nothing
    with pytest.raises(ValueError, match=r"destroy_fill must be one of \('mean', 'black', 'both'\), got 'blur'"):
        LossWeights(destroy=1.0, destroy_fill="blur")


class SmoothNet(nn.Module):
    """A small smooth (tanh) conv classifier in float64, for gradient checks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)))


def test_the_destroying_and_insertion_gradients_match_finite_differences():
    """Through the head's pre-sigmoid low-resolution maps, as in a training step: sigmoid, upsampling, the
    region removed to the mean colour (or pasted on the blur), the frozen classifier, the term."""
    import torch.nn.functional as F

    from tame_core.training import destroy_loss, inserted_inputs, removed_inputs

    preprocess = Preprocess(input_size=(12, 12), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    backbone = Backbone("smooth", SmoothNet().double(), preprocess, [str(i) for i in range(5)], ["conv"])
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 12, generator=generator, dtype=torch.float64)
    maps = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 3])

    def upsampled(z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z.sigmoid(), size=(12, 12), mode="bilinear", align_corners=False)

    def destroy(z: torch.Tensor) -> torch.Tensor:
        return destroy_loss(backbone(removed_inputs(backbone, images, upsampled(z))), targets)

    def insert(z: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(backbone(inserted_inputs(backbone, images, upsampled(z))), targets)

    assert torch.autograd.gradcheck(destroy, (maps,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(insert, (maps,), eps=1e-6, atol=1e-8)
    for fill in ("black", "both"):
        assert torch.autograd.gradcheck(
            lambda z, fill=fill: destroy_loss(backbone(removed_inputs(backbone, images, upsampled(z), fill)), targets),
            (maps,), eps=1e-6, atol=1e-8)
    (grad,) = torch.autograd.grad(destroy(maps), maps)
    assert float(grad.abs().max()) > 1e-4  # the term does move the maps
