"""One training step's loss: clean forward -> targets -> head maps -> masked forward -> loss.

The backbone is frozen, but the cross-entropy gradient must flow *through* it back to the mask, so
only the clean forward (targets and tapped features) runs without a graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..taps import LayerTaps
from .losses import LossTerms, LossWeights, tame_loss

#: ``raw``: the mask multiplies the raw [0, 1] image, which is then normalised (TAME, CNNs);
#: ``normalized``: the mask multiplies the normalised image (T-TAME's order for ViTs).
MASK_ORDERS = ("raw", "normalized")

HeadCall = Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]


def masked_logits(backbone: Backbone, inputs01: torch.Tensor, masks: torch.Tensor, order: str = "raw") -> torch.Tensor:
    """Logits of ``inputs01`` (N, 3, H, W) multiplied by ``masks`` (N, 1, H, W) in the given order."""
    if order == "raw":
        return backbone(inputs01 * masks)
    if order == "normalized":
        return backbone.net(backbone.normalize(inputs01) * masks)
    raise ValueError(f"mask order must be one of {MASK_ORDERS}, got {order!r}")


def batch_loss(
    backbone: Backbone,
    taps: LayerTaps,
    head: HeadCall,
    inputs01: torch.Tensor,
    weights: LossWeights | None = None,
    mask_order: str = "raw",
    top_k: int = 1,
    autocast: contextlib.AbstractContextManager | None = None,
) -> LossTerms:
    """The loss of a batch of raw [0, 1] images (B, 3, H, W); targets are the classifier's top-``top_k``.

    ``head`` is called as ``head(features, classes)`` (so a DDP-wrapped head syncs its gradients) and
    gives (B, B*k, h, w) pre-sigmoid maps: every image's map for every class targeted in the batch.
    """
    autocast = autocast or contextlib.nullcontext()
    batch, size = inputs01.shape[0], inputs01.shape[-2:]
    with torch.no_grad(), taps, autocast:
        logits = backbone(inputs01)
    features = [f.float() for f in taps.features]
    targets = logits.float().topk(top_k, dim=1).indices.flatten()  # (B*k,): image i's k classes, in a row
    with autocast:
        maps = head(features, targets)
    masks = maps.float().sigmoid()  # (B, B*k, h, w)
    rows = torch.arange(batch, device=masks.device)
    own = masks[rows[:, None], (rows[:, None] * top_k + torch.arange(top_k, device=masks.device))]  # (B, k, h, w)
    upsampled = F.interpolate(own, size=tuple(size), mode="bilinear", align_corners=False)
    repeated = inputs01.repeat_interleave(top_k, dim=0)
    with autocast:
        logits_masked = masked_logits(backbone, repeated, upsampled.reshape(-1, 1, *size), mask_order)
    return tame_loss(logits_masked, targets, masks, weights or LossWeights())
