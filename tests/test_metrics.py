"""Metric directions and AD/IC: known answers from a toy model whose logit is a region's mean brightness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tame_core.errors import EvaluationError
from tame_core.metrics import average_drop_increase, deletion_insertion, get_metric, list_metrics, map_area, stream_curve
from tame_core.metrics.base import pixel_ranks, quantiles

SIZE = 10
R = (slice(0, 5), slice(0, 5))  # top-left quarter: the evidence
W = (slice(5, 10), slice(5, 10))  # bottom-right quarter: counter-evidence


class RegionModel(nn.Module):
    """Two classes; logit of class 0 = scale * (mean of ``positive`` - mean of ``negative`` - bias), class 1 = 0.

    So p(class 0) = sigmoid(logit 0) can be worked out by hand for any masked or perturbed image.
    """

    def __init__(self, scale: float = 4.0, negative: bool = False, bias: float = 0.0) -> None:
        super().__init__()
        self.scale, self.negative, self.bias = scale, negative, bias
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        score = x[:, :, R[0], R[1]].mean(dim=(1, 2, 3)) - self.bias
        if self.negative:
            score = score - x[:, :, W[0], W[1]].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * score, torch.zeros_like(score)], dim=1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def region_map(r_value: float, w_value: float) -> torch.Tensor:
    saliency = torch.zeros(SIZE, SIZE)
    saliency[R] = r_value
    saliency[W] = w_value
    return saliency


def test_every_metric_states_its_direction():
    import tame_core.methods  # noqa: F401  (the methods declare the costs: run alone, this file imports nothing else that does)

    assert {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "deletion_auc", "insertion_auc", "MoRF", "LeRF"} <= set(list_metrics())
    assert {"ms_per_image", "forward_passes"} <= set(list_metrics())
    assert list_metrics()[:6] == ["AD100", "IC100", "AD50", "IC50", "AD15", "IC15"]  # table order
    assert all(spec.direction in ("lower", "higher") for spec in map(get_metric, list_metrics()) if spec.name != "area")
    assert get_metric("area").direction == "neither" and get_metric("area").arrow == ""
    assert get_metric("AD50").direction == "lower" and get_metric("IC50").direction == "higher"
    assert get_metric("deletion_auc").direction == "lower" and get_metric("insertion_auc").direction == "higher"
    assert get_metric("MoRF30").direction == "lower" and get_metric("LeRF30").direction == "higher"
    assert get_metric("AD37").direction == "lower" and "37%" in get_metric("AD37").description
    assert get_metric("AD100").better(1.0, 2.0) and get_metric("IC100").better(2.0, 1.0)
    with pytest.raises(EvaluationError, match="unknown metric 'AUC'"):
        get_metric("AUC")


def test_quantiles_match_numpy_and_ranks_keep_raster_order_on_ties():
    maps = torch.rand(3, 7, 9)
    levels = [0.0, 0.15, 0.5, 0.85, 1.0]
    expected = torch.quantile(maps.flatten(1), torch.tensor(levels), dim=1)
    assert torch.allclose(quantiles(maps, levels), expected, atol=1e-6)
    ranks = pixel_ranks(torch.tensor([[[0.0, 1.0], [1.0, 0.5]]]))
    assert ranks.tolist() == [[3, 0, 1, 2]]


def test_average_drop_and_increase_known_answer():
    """Image all ones; class-0 logit = 4 * (mean R - mean W), so Y = sigmoid(0) = 0.5 for both images.

    Image 0, the ideal map (1 on R): every level keeps R and zeros W, O = sigmoid(4): no drop, an increase.
    Image 1, a misleading map (0.5 on R, 1 on W): at 100% and 50% (quantile 0.25) the mask is R * 0.5 and
    W * 1, O = sigmoid(-2); at 15% (quantile 1.0) only W is kept, O = sigmoid(-4).
    """
    model = RegionModel(scale=4.0, negative=True)
    images = torch.ones(2, 3, SIZE, SIZE)
    maps = torch.stack([region_map(1.0, 0.0), region_map(0.5, 1.0)])
    result = average_drop_increase(model, images, maps, [0, 0])
    y = 0.5
    drop_100 = (y - sigmoid(-2.0)) / y * 100
    drop_15 = (y - sigmoid(-4.0)) / y * 100
    assert torch.allclose(result.clean, torch.tensor([y, y]))
    assert torch.allclose(result.masked[:, 0], torch.full((3,), sigmoid(4.0)))
    assert torch.allclose(result.masked[:, 1], torch.tensor([sigmoid(-2.0), sigmoid(-2.0), sigmoid(-4.0)]))
    summary = result.summary()
    assert list(summary) == ["AD100", "IC100", "AD50", "IC50", "AD15", "IC15"]
    assert summary["AD100"] == pytest.approx(drop_100 / 2, rel=1e-5)
    assert summary["AD50"] == pytest.approx(drop_100 / 2, rel=1e-5)
    assert summary["AD15"] == pytest.approx(drop_15 / 2, rel=1e-5)
    assert summary["IC100"] == summary["IC50"] == summary["IC15"] == 50.0
    assert result.per_image()["AD15"].tolist() == pytest.approx([0.0, drop_15], rel=1e-5)


def test_adic_normalises_and_upsamples_low_resolution_maps():
    """A 2x2 map scaled by 7 and offset is the same map after min-max normalisation and upsampling."""
    model = RegionModel(scale=4.0, negative=True)
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    coarse = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    first = average_drop_increase(model, images, coarse, 0).summary()
    second = average_drop_increase(model, images, coarse * 7 + 3, torch.tensor([0])).summary()
    assert first == pytest.approx(second)


def test_adic_batches_forwards():
    model = RegionModel()
    images = torch.rand(5, 3, SIZE, SIZE)
    maps = torch.rand(5, SIZE, SIZE)
    full = average_drop_increase(model, images, maps, 0, batch_size=4)
    assert model.images == 5 + 15 and model.calls == 2 + 4
    model.calls = model.images = 0
    reused = average_drop_increase(model, images, maps, 0, batch_size=100, clean_logits=model(images))
    assert model.calls == 2 and model.images == 5 + 15  # one clean forward (ours), one for all masked images
    assert torch.allclose(full.drop, reused.drop)


def test_adic_rejects_bad_inputs_with_one_line_errors():
    model = RegionModel()
    images = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(EvaluationError, match=r"maps must be \(B, H, W\) with B=2"):
        average_drop_increase(model, images, torch.rand(3, SIZE, SIZE), 0)
    with pytest.raises(EvaluationError, match="images must be a"):
        average_drop_increase(model, images[0], torch.rand(2, SIZE, SIZE), 0)
    with pytest.raises(EvaluationError, match="one integer class per image"):
        average_drop_increase(model, images, torch.rand(2, SIZE, SIZE), [0, 1, 0])
    with pytest.raises(EvaluationError, match="fractions"):
        average_drop_increase(model, images, torch.rand(2, SIZE, SIZE), 0, fractions=(0.0,))
    with pytest.raises(EvaluationError, match="NaN"):
        average_drop_increase(model, images, torch.full((2, SIZE, SIZE), float("nan")), 0)


# --- deletion and insertion curves ----------------------------------------------------------------


def ideal_and_anti_maps() -> torch.Tensor:
    return torch.stack([region_map(1.0, 0.0), 1.0 - region_map(1.0, 0.0)])


def expected_curve(counts: list[int], mode: str, inside: float = 1.0, base: float = 0.0) -> list[float]:
    """p(class 0) when the first n of R's 25 pixels are deleted (or inserted), by hand."""
    values = []
    for n in counts:
        changed = min(n, 25)
        if mode == "deletion":
            mean_r = ((25 - changed) * inside + changed * base) / 25
        else:
            mean_r = (changed * inside + (25 - changed) * base) / 25
        values.append(sigmoid(4.0 * (mean_r - 0.5)))
    return values


def test_deletion_and_insertion_known_answer():
    """Class-0 logit = 4 * (mean R - 0.5) on an all-ones image; with the ideal map (1 on R) the first
    25 pixels changed are R's, so deletion falls to sigmoid(-2) by 25% and insertion rises to sigmoid(2)."""
    model = RegionModel(scale=4.0, bias=0.5)
    images = torch.ones(2, 3, SIZE, SIZE)
    result = deletion_insertion(model, images, ideal_and_anti_maps(), 0, steps=4, baseline="black")
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    high, low = sigmoid(2.0), sigmoid(-2.0)
    assert result.deletion[0].tolist() == pytest.approx([high, low, low, low, low], rel=1e-5)
    assert result.insertion[0].tolist() == pytest.approx([low, high, high, high, high], rel=1e-5)
    assert result.deletion_auc[0].item() == pytest.approx(0.25 * (high / 2 + 3.5 * low), rel=1e-5)
    assert result.insertion_auc[0].item() == pytest.approx(0.25 * (low / 2 + 3.5 * high), rel=1e-5)
    # The anti-map deletes R last: deletion stays high until the end, insertion stays low until the end.
    assert result.deletion[1].tolist() == pytest.approx([high, high, high, high, low], rel=1e-5)
    assert result.deletion_auc[1] > result.deletion_auc[0] and result.insertion_auc[1] < result.insertion_auc[0]
    summary = result.summary()
    assert summary["deletion_auc"] == pytest.approx(result.deletion_auc.mean().item())
    assert set(summary) == {"deletion_auc", "insertion_auc"}


def test_curve_steps_change_exactly_their_share_of_pixels():
    model = RegionModel(scale=4.0, bias=0.5)
    images = torch.ones(1, 3, SIZE, SIZE)
    result = deletion_insertion(model, images, region_map(1.0, 0.0)[None], [0], steps=10, baseline="black", batch_size=3)
    counts = list(range(0, 101, 10))
    assert result.deletion[0].tolist() == pytest.approx(expected_curve(counts, "deletion"), rel=1e-5)
    assert result.insertion[0].tolist() == pytest.approx(expected_curve(counts, "insertion"), rel=1e-5)


def test_curve_baselines():
    """A model without a mean colour: "mean" deletes to black, and the blur pads with black (its normalised
    zero), so the blur of a black image is the image (a flat curve)."""
    model = RegionModel(scale=4.0, bias=0.5)
    flat = deletion_insertion(model, torch.zeros(1, 3, SIZE, SIZE), region_map(1.0, 0.0)[None], 0, steps=4, baseline="blur")
    assert flat.deletion[0].tolist() == pytest.approx([sigmoid(-2.0)] * 5, rel=1e-5)
    image = torch.ones(1, 3, SIZE, SIZE)
    counts = list(range(0, 101, 10))
    plain = deletion_insertion(model, image, region_map(1.0, 0.0)[None], 0, steps=10, baseline="deletion=mean,insertion=black")
    assert plain.deletion[0].tolist() == pytest.approx(expected_curve(counts, "deletion", 1.0, 0.0), rel=1e-5)
    assert plain.insertion[0].tolist() == pytest.approx(expected_curve(counts, "insertion", 1.0, 0.0), rel=1e-5)
    with pytest.raises(EvaluationError, match="unknown fill 'noise'; choose one of mean, black, blur for both curves"):
        deletion_insertion(model, image, region_map(1.0, 0.0)[None], 0, baseline="noise")


BIG = 24
C = (slice(6, 18), slice(6, 18))  # 144 pixels, a quarter of the picture, 6 from every border (the blur reaches 5)


class ChannelNet(nn.Module):
    """Logit of class 0 = 4 x the mean over C of the *normalised* red channel; class 1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 4.0 * x[:, 0, C[0], C[1]].mean(dim=(1, 2))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def channel_backbone():
    from tame_core.backbones import Backbone
    from tame_core.preprocessing import Preprocess

    preprocess = Preprocess(input_size=(BIG, BIG), mean=(0.25, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone("channel", ChannelNet(), preprocess, ["red", "other"], [])


def test_each_fill_gives_its_hand_computed_curves():
    """A white image: the normalised red channel is (1 - 0.25) / 0.5 = 1.5, so p0 = sigmoid(6). The ideal
    map's first 25 % of pixels are C. Deleted to the mean colour C reads 0 (p = 1/2), to black
    (0 - 0.25) / 0.5 = -0.5 (p = sigmoid(-2)); the blur leaves C white (p stays sigmoid(6))."""
    backbone = channel_backbone()
    ideal = torch.zeros(1, BIG, BIG)
    ideal[0, C[0], C[1]] = 1.0
    image = torch.ones(1, 3, BIG, BIG)
    top, mean, black = sigmoid(6.0), 0.5, sigmoid(-2.0)

    def auc(values):  # trapezoid over 5 points, 0.25 apart
        return 0.25 * (values[0] / 2 + sum(values[1:4]) + values[4] / 2)

    expected = {
        "mean": ([top] + [mean] * 4, [mean] + [top] * 4),
        "black": ([top] + [black] * 4, [black] + [top] * 4),
        "blur": ([top] * 5, [top] * 5),
    }
    for fill, (deletion, insertion) in expected.items():
        result = deletion_insertion(backbone, image, ideal, 0, steps=4, baseline=fill)
        assert result.deletion[0].tolist() == pytest.approx(deletion, rel=1e-5), fill
        assert result.insertion[0].tolist() == pytest.approx(insertion, rel=1e-5), fill
        assert result.deletion_auc.item() == pytest.approx(auc(deletion), rel=1e-5), fill
        assert result.insertion_auc.item() == pytest.approx(auc(insertion), rel=1e-5), fill
    default = deletion_insertion(backbone, image, ideal, 0, steps=4)  # RISE's: deletion to the mean colour, insertion onto blur
    assert default.deletion[0].tolist() == pytest.approx(expected["mean"][0], rel=1e-5)
    assert default.insertion[0].tolist() == pytest.approx(expected["blur"][1], rel=1e-5)
    stream = [p for _, p in stream_curve(backbone, image[0], ideal[0], 0, "deletion", steps=4)]
    assert stream == pytest.approx(expected["mean"][0], rel=1e-5)


def test_the_blur_fill_is_rises():
    """RISE blurs with scipy's sigma-5 Gaussian filter of an 11 x 11 impulse, padding its normalised images
    with zeros: in raw pixels, with the mean colour."""
    from tame_core.metrics.curves import baseline_images, rise_kernel

    ndimage = pytest.importorskip("scipy.ndimage")
    impulse = torch.zeros(11, 11, dtype=torch.float64)
    impulse[5, 5] = 1.0
    kernel = torch.from_numpy(ndimage.gaussian_filter(impulse.numpy(), 5.0))
    assert torch.allclose(rise_kernel().double(), kernel, atol=1e-8)
    image = torch.zeros(1, 3, 21, 21)
    image[:, :, 10, 10] = 1.0
    blurred = baseline_images(image, "blur")  # no mean colour: padded with black
    assert torch.allclose(blurred[0, 0, 5:16, 5:16].double(), kernel, atol=1e-7) and float(blurred[0, 0, 4, 10]) == 0.0
    grey = torch.tensor([0.25, 0.5, 0.75]).view(1, 3, 1, 1)
    flat = grey.expand(1, 3, 21, 21)
    assert torch.allclose(baseline_images(flat, "blur", grey), flat, atol=1e-6)  # the mean colour stays, borders too
    white = baseline_images(torch.ones(1, 3, 21, 21), "blur", grey)
    inside = kernel[5:, 5:].sum()  # the corner pixel keeps the kernel's quarter (plus its centre row and column) on the picture
    assert float(white[0, 0, 0, 0]) == pytest.approx(0.25 + 0.75 * float(inside), rel=1e-5)
    assert float(white[0, 0, 10, 10]) == pytest.approx(1.0, rel=1e-6)


def test_curve_fills_are_parsed_strictly():
    from tame_core.metrics.curves import curve_fills, fills_text

    assert curve_fills() == {"deletion": "mean", "insertion": "blur"} == curve_fills("insertion=blur")
    assert curve_fills("blur") == {"deletion": "blur", "insertion": "blur"}
    assert curve_fills(" deletion=black , insertion=mean ") == {"deletion": "black", "insertion": "mean"}
    assert curve_fills({"deletion": "black"}) == {"deletion": "black", "insertion": "blur"}
    assert fills_text({"insertion": "black"}) == "deletion=mean,insertion=black"
    for wrong, message in [
        ("grey", "unknown fill 'grey'; choose one of mean, black, blur for both curves, or CURVE=FILL,... with curves deletion, insertion"),
        ("deletion=grey", "unknown fill 'grey' for deletion; choose one of mean, black, blur"),
        ("removal=blur", "unknown curve 'removal' in the baseline; choose from deletion, insertion"),
        ({"removal": "blur"}, "unknown curve 'removal' in the baseline; choose from deletion, insertion"),
        ("deletion=mean,deletion=black", "baseline 'deletion=mean,deletion=black' names a curve twice"),
        ("deletion=mean,blur", "baseline 'deletion=mean,blur' must be one of mean, black, blur for both curves"),
    ]:
        with pytest.raises(EvaluationError) as error:
            curve_fills(wrong)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_curve_forwards_are_batched():
    model = RegionModel()
    images = torch.rand(3, 3, SIZE, SIZE)
    deletion_insertion(model, images, torch.rand(3, SIZE, SIZE), 0, steps=9, batch_size=16)
    assert model.images == 2 * 3 * 10 and model.calls == 2 * 2  # 30 rows per curve: two forwards of <= 16
    model.calls = model.images = 0
    only = deletion_insertion(model, images, torch.rand(3, SIZE, SIZE), 0, steps=9, batch_size=64, modes=["insertion"])
    assert model.calls == 1 and bool(torch.isnan(only.deletion).all())


def test_stream_curve_yields_points_as_batches_finish_and_matches_the_batched_curve():
    model = RegionModel(scale=4.0, bias=0.5)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, SIZE, SIZE, generator=generator)
    saliency = torch.rand(SIZE, SIZE, generator=generator)
    stream = stream_curve(model, image, saliency, 0, mode="insertion", steps=10, baseline="blur", batch_size=4)
    first = next(stream)
    assert model.calls == 1 and first[0] == 0.0
    points = [first, *stream]
    assert model.calls == 3 and len(points) == 11
    batched = deletion_insertion(model, image[None], saliency[None], 0, steps=10, baseline="blur")
    assert [p for _, p in points] == pytest.approx(batched.insertion[0].tolist(), abs=1e-6)
    assert [f for f, _ in points] == pytest.approx(batched.fractions.tolist())
    with pytest.raises(EvaluationError, match="curve mode"):
        next(stream_curve(model, image, saliency, 0, mode="sideways"))


def test_map_area_is_the_mean_of_the_normalised_map_at_the_input():
    """A 2x2 map with one corner hot, upsampled to 4x4 (bilinear, half-pixel centres) and min-max scaled:
    along each axis the hot pixel weighs 1, 3/4, 1/4, 0 (sum 2), so the map sums to 2 x 2 = 4 over 16
    pixels: 25 %. Scaling the map does not move it."""
    images = torch.rand(2, 3, 4, 4)
    maps = torch.zeros(2, 2, 2)
    maps[:, 0, 0] = torch.tensor([1.0, 7.0])
    assert map_area(images, maps).tolist() == pytest.approx([25.0, 25.0], abs=1e-5)
    assert map_area(images, torch.ones(2, 4, 4)).tolist() == [0.0, 0.0]  # a constant map min-max scales to zeros
