"""ROAD (Rong et al., ICML 2022): remove pixels by the map, impute them, see if the prediction survives.

Most-relevant-first (MoRF) removes the top-ranked pixels: a faithful map breaks the prediction fast
(lower agreement is better). Least-relevant-first (LeRF) removes the bottom-ranked ones: it should
survive (higher is better). Removed pixels are filled by noisy linear imputation, so the removal
itself leaves no shape for the classifier to see. Exactly ``p``% of the pixels are removed at level
``p`` (ties broken in raster order), whatever the map's ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from ..errors import EvaluationError
from ..batching import check_batch_size, scores
from .base import (
    DEFAULT_ROAD_PERCENTAGES, MetricSpec, clean_scores, per_image_summary, pixel_ranks, prepare, register_metric,
    register_metric_family,
)
from .imputation import noisy_linear_impute

Order = Literal["morf", "lerf"]
ORDERS: tuple[str, ...] = ("morf", "lerf")
#: Per order, the share of images whose top-1 survives each removal level: MoRF50, LeRF50...
FAMILIES = {
    "morf": register_metric_family("MoRF", "lower", "ROAD most-relevant-first: % of images whose top-1 survives removing {n}% of pixels"),
    "lerf": register_metric_family("LeRF", "higher", "ROAD least-relevant-first: % of images whose top-1 survives removing {n}% of pixels"),
}
register_metric(
    MetricSpec("MoRF", "lower", "ROAD most-relevant-first: top-1 agreement (%) averaged over the removal levels"),
    MetricSpec("LeRF", "higher", "ROAD least-relevant-first: top-1 agreement (%) averaged over the removal levels"),
    *(family.spec(p) for family in FAMILIES.values() for p in DEFAULT_ROAD_PERCENTAGES),
    MetricSpec("MoRF_dprob", "lower", "ROAD most-relevant-first: mean change of the class probability (imputed - clean)"),
    MetricSpec("LeRF_dprob", "higher", "ROAD least-relevant-first: mean change of the class probability (imputed - clean)"),
)
#: Standard deviation of the noise added to imputed pixels (the ROAD paper's and pytorch-grad-cam's).
DEFAULT_NOISE = 0.01


@dataclass
class RoadResult:
    """Per removal level and image: the top-1 and the explained class's probability after imputation."""

    order: str
    percentages: tuple[int, ...]
    clean_top1: torch.Tensor  # (B,)
    clean_prob: torch.Tensor  # (B,)
    top1: torch.Tensor  # (P, B)
    prob: torch.Tensor  # (P, B)

    @property
    def agreement(self) -> torch.Tensor:
        """Whether the imputed image's top-1 is the clean image's top-1, (P, B) bool."""
        return self.top1 == self.clean_top1

    @property
    def prob_change(self) -> torch.Tensor:
        """Imputed minus clean probability of the explained class, (P, B)."""
        return self.prob - self.clean_prob

    def per_image(self) -> dict[str, torch.Tensor]:
        """``MoRF10``..``MoRF90`` (% agreement), ``MoRF`` (their mean) and ``MoRF_dprob`` (or LeRF...)."""
        family = FAMILIES[self.order]
        name = family.prefix
        agreement = self.agreement.float() * 100.0
        values = {family.name(p): agreement[row] for row, p in enumerate(self.percentages)}
        values[name] = agreement.mean(dim=0)
        values[f"{name}_dprob"] = self.prob_change.mean(dim=0)
        return values

    def summary(self) -> dict[str, float]:
        return per_image_summary(self.per_image())


def removal_keep_masks(maps: torch.Tensor, percentages: Sequence[int], order: str) -> torch.Tensor:
    """Pixels kept at each removal level (P, B, H, W): all but the top (MoRF) or bottom (LeRF) p%."""
    ranks = pixel_ranks(maps if order == "morf" else -maps).view_as(maps)
    pixels = maps.shape[-2] * maps.shape[-1]
    removed = torch.tensor([round(p / 100 * pixels) for p in percentages], device=maps.device)
    return ranks[None] >= removed[:, None, None, None]


def road(
    model: nn.Module,
    images01: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | int,
    percentages: Sequence[int] = DEFAULT_ROAD_PERCENTAGES,
    order: Order = "morf",
    batch_size: int | None = None,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    tolerance: float = 1e-4,
    clean_logits: torch.Tensor | None = None,
) -> RoadResult:
    """ROAD at each removal level in ``percentages`` (0 < p < 100) for ``order`` "morf" or "lerf".

    Imputation and forwards run in batches of ``batch_size`` perturbed images on the images' device;
    the imputation noise is drawn from a generator seeded with ``seed``, so runs repeat exactly.
    ``tolerance`` is the imputation solver's (see :func:`noisy_linear_impute`).
    """
    if order not in ORDERS:
        raise EvaluationError(f"ROAD order must be one of {', '.join(ORDERS)}, got {order!r}")
    percentages = tuple(int(p) for p in percentages)
    if not percentages or any(not 0 < p < 100 for p in percentages):
        raise EvaluationError(f"ROAD percentages must be between 0 and 100 (exclusive), got {list(percentages)}")
    images01, maps, classes = prepare(images01, maps, classes)
    batch = images01.shape[0]
    size = check_batch_size(batch_size, images01.device)
    clean_prob, clean_top1 = clean_scores(model, images01, classes, size, clean_logits)
    keep = removal_keep_masks(maps, percentages, order).flatten(0, 1)  # row p * B + b
    rows = torch.arange(len(percentages) * batch, device=images01.device)
    generator = torch.Generator(device=images01.device).manual_seed(seed)

    def build(start: int, stop: int) -> torch.Tensor:
        return noisy_linear_impute(images01[rows[start:stop] % batch], keep[start:stop], noise, generator, tolerance)

    prob, top1 = scores(model, len(rows), build, classes[rows % batch], size)
    shape = (len(percentages), batch)
    return RoadResult(order, percentages, clean_top1, clean_prob, top1.view(shape), prob.view(shape))
