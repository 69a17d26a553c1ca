"""ROAD: the torch imputer against pytorch-grad-cam's scipy one, and known answers on a toy model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from test_metrics import SIZE, R, RegionModel, region_map

from tame_core.errors import EvaluationError
from tame_core.metrics import noisy_linear_impute, road
from tame_core.metrics.road import removal_keep_masks

# pytorch-grad-cam calls np.percentile on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


def smooth_batch(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural-ish images (blurred noise) and tie-free smooth maps, like CAMs upsampled from 7x7."""
    generator = torch.Generator().manual_seed(seed)
    images = F.avg_pool2d(torch.rand(batch, 3, height, width, generator=generator), 5, 1, 2, count_include_pad=False)
    coarse = torch.rand(batch, 1, 7, 7, generator=generator)
    maps = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[:, 0]
    maps = maps + 1e-4 * torch.rand(maps.shape, generator=generator)  # no ties
    return images, (maps - maps.min()) / (maps.max() - maps.min())


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("count, height, width", [(3, 50, 80), (1, 200, 200)])
def test_imputation_matches_pytorch_grad_cam_without_noise(order, count, height, width):
    """Every level removes a whole number of pixels, so our exact-count removal and grad-cam's
    percentile threshold pick the same pixels. 50 x 80 ends its V-cycle with smoothing on a 13 x 40
    grid; 200 x 200 with the dense solve on 13 x 13."""
    images, maps = smooth_batch(count, height, width, seed=0)
    percentages = [10, 50, 90]
    keep = removal_keep_masks(maps, percentages, order)  # (P, B, H, W)
    ours = noisy_linear_impute(images.repeat(len(percentages), 1, 1, 1), keep.flatten(0, 1), noise=0.0, tolerance=1e-6)
    remover = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    worst = 0.0
    for row, p in enumerate(percentages):
        for b in range(images.shape[0]):
            theirs = remover(100 - p, NoisyLinearImputer(noise=0.0))(images[b], maps[b])
            assert int((~keep[row, b]).sum()) == p * height * width // 100
            worst = max(worst, float((ours[row * images.shape[0] + b] - theirs).abs().max()))
    # float32 floor: 90% removed from 200 x 200 leaves 36,000 unknowns, and both solvers (the multigrid
    # before and after its exact coarse solve) stop at 1.2e-4 to 2e-4 there whatever the tolerance
    assert worst < (1e-4 if height * width < 10_000 else 3e-4)


@pytest.mark.parametrize("height, width", [(224, 224), (40, 30), (25, 38)])
def test_multigrid_restriction_is_the_prolongations_transpose(height, width):
    """CG needs a symmetric preconditioner: <prolong(e), r> = <e, restrict(r)> for any e, r, whether
    the strided sums (even sides) or aten's upsampling backward (odd sides) restrict."""
    from tame_core.metrics.imputation import _Level

    level = _Level(torch.ones(1, 1, height, width))
    generator = torch.Generator().manual_seed(1)
    e = torch.rand(2, 3, *level.coarser.size, generator=generator, dtype=torch.float32)
    r = torch.rand(2, 3, height, width, generator=generator, dtype=torch.float32)
    left = (level.prolong(e) * r).sum(dim=(-2, -1))
    right = (e * level.restrict(r)).sum(dim=(-2, -1))
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-4)


def test_imputation_reproduces_a_linear_ramp_and_keeps_kept_pixels():
    """A left-right ramp is its own neighbour average away from the left and right edges."""
    ramp = torch.linspace(0, 1, 40).expand(3, 30, 40)[None].clone()
    keep = torch.ones(1, 30, 40, dtype=torch.bool)
    keep[:, 0:20, 5:35] = False  # touches the top edge, not the left or right
    filled = noisy_linear_impute(ramp, keep, noise=0.0, tolerance=1e-7)
    assert torch.allclose(filled, ramp, atol=1e-5)
    noisy = noisy_linear_impute(ramp, keep, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :, keep[0]], ramp[:, :, keep[0]])
    assert 0.05 < float((noisy - ramp)[:, :, ~keep[0]].std()) < 0.15
    with pytest.raises(EvaluationError, match="every pixel is removed"):
        noisy_linear_impute(ramp, torch.zeros(1, 30, 40, dtype=torch.bool))
    with pytest.raises(EvaluationError, match="keep mask must be"):
        noisy_linear_impute(ramp, keep[0])


def test_road_known_answer_on_the_region_model():
    """R is bright (1), the rest dark; class 0 wins while mean R > 0.5. With the ideal map, MoRF from 30%
    on removes all of R, which then fills from dark neighbours (about 0): the prediction flips. LeRF up to
    70% removes only dark pixels: the prediction stays."""
    model = RegionModel(scale=4.0, bias=0.5)
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[:, :, R[0], R[1]] = 1.0
    saliency = region_map(1.0, 0.0)[None]
    morf = road(model, image, saliency, 0, order="morf")
    lerf = road(model, image, saliency, 0, order="lerf")
    assert morf.percentages == (10, 20, 30, 40, 50, 70, 90)
    assert morf.clean_top1.tolist() == [0]
    assert morf.agreement[2:, 0].tolist() == [False] * 5
    assert lerf.agreement[:6, 0].tolist() == [True] * 6
    assert lerf.prob_change[:6, 0].abs().max() < 1e-6  # R untouched, so the probability too
    summary = morf.summary()
    assert {"MoRF10", "MoRF90", "MoRF", "MoRF_dprob"} <= set(summary)
    assert summary["MoRF30"] == 0.0 and summary["MoRF"] <= 2 / 7 * 100
    assert lerf.summary()["LeRF50"] == 100.0


def test_road_is_seeded_and_batched():
    model = RegionModel(scale=4.0, bias=0.5)
    images, maps = smooth_batch(2, SIZE, SIZE, seed=3)
    first = road(model, images, maps, 0, percentages=(20, 60), batch_size=3, seed=5)
    assert model.calls == 1 + 2 and model.images == 2 + 4  # clean batch, then 4 imputed images in 3 + 1
    again = road(model, images, maps, 0, percentages=(20, 60), batch_size=3, seed=5)
    assert torch.equal(first.prob, again.prob)
    other = road(model, images, maps, 0, percentages=(20, 60), seed=6, noise=0.5)
    assert not torch.allclose(first.prob, other.prob)
    with pytest.raises(EvaluationError, match="ROAD order"):
        road(model, images, maps, 0, order="random")
    with pytest.raises(EvaluationError, match="between 0 and 100"):
        road(model, images, maps, 0, percentages=(0, 50))
