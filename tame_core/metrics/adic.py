"""Average Drop and Increase in Confidence (Grad-CAM++ protocol, as the TAME papers report them).

The map is min-max normalised, upsampled to the input and zeroed below its per-image quantile
``1 - fraction`` (so ``fraction`` of its pixels are kept: 100%, 50%, 15%); the raw image times that
soft mask is classified. With Y the explained class's probability on the clean image and O on the
masked one: AD = mean of max(0, Y - O) / Y * 100 (lower is better), IC = % of images with O > Y
(higher is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..batching import check_batch_size, scores
from ..errors import EvaluationError
from .base import DEFAULT_FRACTIONS, clean_scores, per_image_summary, prepare, quantiles, register_metric, register_metric_family

AD = register_metric_family("AD", "lower", "Average Drop (%) with {n}% of the map's pixels kept")
IC = register_metric_family("IC", "higher", "Increase in Confidence (% of images) with {n}% of the map's pixels kept")
register_metric(*(family.spec(round(f * 100)) for f in DEFAULT_FRACTIONS for family in (AD, IC)))


@dataclass
class ADICResult:
    """Clean and masked class probabilities; AD/IC per image and averaged."""

    fractions: tuple[float, ...]
    clean: torch.Tensor  # (B,) Y
    masked: torch.Tensor  # (F, B) O, one row per fraction

    @property
    def drop(self) -> torch.Tensor:
        """max(0, Y - O) / Y * 100 per fraction and image, (F, B)."""
        return (self.clean - self.masked).clamp_min(0) / self.clean.clamp_min(1e-12) * 100.0

    @property
    def increase(self) -> torch.Tensor:
        """O > Y per fraction and image, (F, B) bool."""
        return self.masked > self.clean

    def per_image(self) -> dict[str, torch.Tensor]:
        """``AD<n>`` and ``IC<n>`` (n = % of pixels kept) per image; their means are :meth:`summary`."""
        values: dict[str, torch.Tensor] = {}
        for row, fraction in enumerate(self.fractions):
            percent = round(fraction * 100)
            values[AD.name(percent)] = self.drop[row]
            values[IC.name(percent)] = self.increase[row].float() * 100.0
        return values

    def summary(self) -> dict[str, float]:
        """{"AD100", "IC100", "AD50", "IC50", "AD15", "IC15"} (for the default fractions), in %."""
        return per_image_summary(self.per_image())


def keep_masks(maps: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """Soft masks (F, B, H, W): each [0, 1] map zeroed below its quantile ``1 - fraction``."""
    thresholds = quantiles(maps, [1.0 - f for f in fractions])  # (F, B)
    return torch.where(maps[None] >= thresholds[:, :, None, None], maps[None], torch.zeros((), device=maps.device))


def average_drop_increase(
    model: nn.Module,
    images01: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    batch_size: int | None = None,
    clean_logits: torch.Tensor | None = None,
) -> ADICResult:
    """AD and IC of ``maps`` (B, h, w) explaining ``classes`` (B,) of ``images01`` (B, 3, H, W).

    One forward per image and fraction, in batches of ``batch_size``; pass ``clean_logits`` (B, classes)
    when the clean images' logits are already known, to skip their forward.
    """
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise EvaluationError(f"fractions of pixels kept must be in (0, 1], got {list(fractions)}")
    images01, maps, classes = prepare(images01, maps, classes)
    batch = images01.shape[0]
    size = check_batch_size(batch_size, images01.device)
    clean, _ = clean_scores(model, images01, classes, size, clean_logits)
    masks = keep_masks(maps, fractions).flatten(0, 1)  # row f * B + b
    rows = torch.arange(len(fractions) * batch, device=images01.device)

    def build(start: int, stop: int) -> torch.Tensor:
        return images01[rows[start:stop] % batch] * masks[start:stop, None]

    masked, _ = scores(model, len(rows), build, classes[rows % batch], size)
    return ADICResult(fractions, clean, masked.view(len(fractions), batch))
