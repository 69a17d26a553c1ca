"""One training step's loss: clean forward -> targets -> head maps -> masked forward -> loss.

The backbone is frozen, but the cross-entropy gradient must flow *through* it back to the mask, so
only the clean forward (targets and tapped features) runs without a graph. The optional destroying and
insertion terms (:mod:`.losses`) each add one forward of the same masks, with the region removed or
pasted on the blurred image: fills shared with the deletion and insertion curves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..metrics.curves import baseline_images, fill_colour
from ..maps import resize_and_blur
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


def removed_inputs(backbone: Backbone, inputs01: torch.Tensor, masks: torch.Tensor, fill: str = "mean") -> torch.Tensor:
    """``inputs01`` (N, 3, H, W) with the masks' (N, 1, H, W) region set to the classifier's mean colour
    (the deletion curves' default fill, RISE's), to ``black``, or (``both``) to the mean colour in even
    rows and black in odd ones; the complement mask ``1 - m`` keeps the rest."""
    if fill == "both":
        filled = baseline_images(inputs01, "mean", fill_colour(backbone))
        filled[1::2] = 0.0
    else:
        filled = baseline_images(inputs01, fill, fill_colour(backbone))
    return inputs01 * (1 - masks) + filled * masks


def inserted_inputs(backbone: Backbone, inputs01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The masks' region of ``inputs01`` pasted on its blur (the insertion curves' canvas, RISE's)."""
    return inputs01 * masks + baseline_images(inputs01, "blur", fill_colour(backbone)) * (1 - masks)


def choose_targets(candidates: torch.Tensor, count: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` of each image's candidate classes (B, k), drawn without replacement; all of them when None."""
    if count is None or count >= candidates.shape[1]:
        return candidates
    noise = torch.rand(candidates.shape, generator=generator)  # on the CPU, where the generator lives
    return candidates.gather(1, noise.argsort(dim=1)[:, :count].to(candidates.device))


def batch_loss(
    backbone: Backbone,
    taps: LayerTaps,
    head: HeadCall,
    inputs01: torch.Tensor,
    weights: LossWeights | None = None,
    mask_order: str = "raw",
    top_k: int = 1,
    autocast: contextlib.AbstractContextManager | None = None,
    per_image: int | None = None,
    generator: torch.Generator | None = None,
    excluded: torch.Tensor | None = None,
    mask_blur: float = 0.0,
) -> LossTerms | None:
    """The loss of a batch of raw [0, 1] images (B, 3, H, W); targets are the classifier's top-``top_k``.

    With ``per_image`` = n < k, each image trains n of its top-k classes drawn at random (``generator``):
    as many classes' maps learn as with top-k, at the cost of n masked forwards per image.
    ``head`` is called as ``head(features, classes)`` (so a DDP-wrapped head syncs its gradients) and
    gives (B, B*n, h, w) pre-sigmoid maps: every image's map for every class targeted in the batch.
    ``excluded`` (num_classes,) bool: images with a target among these classes leave the batch, so no
    map of such a class is ever trained (``None`` when every image left it).
    ``mask_blur``: upsample the masks with the card's map blur (:func:`~tame_core.maps.resize_and_blur`,
    sigma that fraction of the input's shorter side), so training masks the image as explanations will.
    """
    autocast = autocast or contextlib.nullcontext()
    batch, size = inputs01.shape[0], inputs01.shape[-2:]
    with torch.no_grad(), taps, autocast:
        logits = backbone(inputs01)
    features = [f.float() for f in taps.features]
    chosen = choose_targets(logits.float().topk(top_k, dim=1).indices, per_image, generator)
    if excluded is not None:
        keep = ~excluded.to(chosen.device)[chosen].any(dim=1)
        if not bool(keep.all()):
            if not bool(keep.any()):
                return None
            inputs01, chosen, features = inputs01[keep], chosen[keep], [f[keep] for f in features]
            batch = inputs01.shape[0]
    count = chosen.shape[1]
    targets = chosen.flatten()  # (B*n,): image i's n classes, in a row
    with autocast:
        maps = head(features, targets)
    masks = maps.float().sigmoid()  # (B, B*n, h, w)
    rows = torch.arange(batch, device=masks.device)
    own = masks[rows[:, None], (rows[:, None] * count + torch.arange(count, device=masks.device))]  # (B, n, h, w)
    if mask_blur:
        upsampled = resize_and_blur(own, size, mask_blur)
    else:
        upsampled = F.interpolate(own, size=tuple(size), mode="bilinear", align_corners=False)
    repeated = inputs01.repeat_interleave(count, dim=0)
    flat = upsampled.reshape(-1, 1, *size)
    weights = weights or LossWeights()
    extra = {}
    with autocast:
        logits_masked = masked_logits(backbone, repeated, flat, mask_order)
        if weights.destroy:
            extra["removed_logits"] = backbone(removed_inputs(backbone, repeated, flat, weights.destroy_fill))
        if weights.insert:
            extra["inserted_logits"] = backbone(inserted_inputs(backbone, repeated, flat))
    return tame_loss(logits_masked, targets, masks, weights, **extra)
