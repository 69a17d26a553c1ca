"""Metric directions and AD/IC: known answers from a toy model whose logit is a region's mean brightness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tame_core.errors import EvaluationError
from tame_core.metrics import METRICS, average_drop_increase, spec_for
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
    assert {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "deletion_auc", "insertion_auc", "MoRF", "LeRF"} <= set(METRICS)
    assert {"ms_per_image", "forward_passes"} <= set(METRICS)
    assert all(spec.direction in ("lower", "higher") for spec in METRICS.values())
    assert METRICS["AD50"].direction == "lower" and METRICS["IC50"].direction == "higher"
    assert METRICS["deletion_auc"].direction == "lower" and METRICS["insertion_auc"].direction == "higher"
    assert METRICS["MoRF30"].direction == "lower" and METRICS["LeRF30"].direction == "higher"
    assert spec_for("AD37").direction == "lower" and "37%" in spec_for("AD37").description
    assert METRICS["AD100"].better(1.0, 2.0) and METRICS["IC100"].better(2.0, 1.0)
    with pytest.raises(EvaluationError, match="unknown metric 'AUC'"):
        spec_for("AUC")


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
