"""The papers' loss: keep the classifier's prediction on the masked image, with small, smooth maps.

``loss = ce * CE(masked logits, target) + area * mean((a + area_eps) ** area_power) + tv * TV(a)``,
where ``a`` are the sigmoid maps at the head's resolution. The area and TV terms run over the maps of
every class predicted in the batch for every image (B x B maps for top-1 targets), so a head also
learns to keep the maps of *other* images' classes small; the CE term uses each image's own map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Coefficients of the loss terms; the defaults are the papers'."""

    ce: float = 1.5
    area: float = 2.0
    area_eps: float = 0.0005
    area_power: float = 0.3
    tv: float = 0.01
    tv_border: float = 0.3

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class LossTerms:
    """The weighted total and each unweighted term (what the log and the progress bar show)."""

    loss: torch.Tensor
    ce: torch.Tensor
    area: torch.Tensor
    tv: torch.Tensor


def area_loss(masks: torch.Tensor, eps: float = 0.0005, power: float = 0.3) -> torch.Tensor:
    """``mean((masks + eps) ** power)``: a concave penalty, so small activations cost relatively most."""
    return (masks + eps).pow(power).mean()


def variation_loss(masks: torch.Tensor, border: float = 0.3) -> torch.Tensor:
    """Squared differences of vertical and horizontal neighbours plus ``border`` x squared edge values.

    The edge values are the first and last row and column of every map (a corner counts twice), so
    maps fade out towards the picture's border. The sum is divided by 2 x the batch size (dim 0).
    ``masks`` is (B, K, h, w).
    """
    vertical = (masks[..., 1:, :] - masks[..., :-1, :]).pow(2).sum()
    horizontal = (masks[..., :, 1:] - masks[..., :, :-1]).pow(2).sum()
    edges = (
        masks[..., 0, :].pow(2).sum()
        + masks[..., -1, :].pow(2).sum()
        + masks[..., :, 0].pow(2).sum()
        + masks[..., :, -1].pow(2).sum()
    )
    return (vertical + horizontal + border * edges) / (2 * masks.shape[0])


def tame_loss(
    masked_logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, weights: LossWeights | None = None
) -> LossTerms:
    """The total loss from the masked-input logits (N, classes), their targets (N,) and all maps (B, K, h, w)."""
    weights = weights or LossWeights()
    ce = F.cross_entropy(masked_logits.float(), targets)
    area = area_loss(masks.float(), weights.area_eps, weights.area_power)
    tv = variation_loss(masks.float(), weights.tv_border)
    total = weights.ce * ce + weights.area * area + weights.tv * tv
    return LossTerms(total, ce, area, tv)
