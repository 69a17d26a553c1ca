"""The papers' loss: keep the classifier's prediction on the masked image, with small, smooth maps.

``loss = ce * CE(masked logits, target) + area * mean((a + area_eps) ** area_power) + tv * TV(a)``,
where ``a`` are the sigmoid maps at the head's resolution. The area and TV terms run over the maps of
every class predicted in the batch for every image (B x B maps for top-1 targets), so a head also
learns to keep the maps of *other* images' classes small; the CE term uses each image's own map.

Two optional terms, off (weight 0) in the papers' recipe, come from real-time saliency (Dabkowski &
Gal, "Real Time Image Saliency for Black Box Classifiers", NeurIPS 2017), which trains a masking model
for both the smallest sufficient and the smallest destroying region:

- ``destroy * mean p(target | image with the map's region removed)``: the region is set to the
  classifier's mean colour (the complement mask ``1 - a`` keeps the rest), as deletion curves delete,
  so removing what the map shows must lose the class (``destroy_fill``: black, or both fills in turn);
- ``insert * CE(logits of the map's region pasted on the blurred image, target)``: the region alone, on
  the blurred canvas that insertion curves start from, must keep the class.

Each costs one more backbone forward (and backward) per step when its weight is not 0, none when it is.
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
    destroy: float = 0.0  # Dabkowski & Gal's destroying term; 0: off (the papers' recipe)
    insert: float = 0.0  # the insertion-style preservation term; 0: off
    destroy_fill: str = "mean"  # what the removed region becomes: one of DESTROY_FILLS

    def __post_init__(self) -> None:
        if self.destroy_fill not in DESTROY_FILLS:
            raise ValueError(f"destroy_fill must be one of {DESTROY_FILLS}, got {self.destroy_fill!r}")

    def to_dict(self) -> dict[str, float | str]:
        """The weights; a term beyond the papers' is left out while off (and the destroying fill while it is
        the default), so their recipe's card and resume key read as before the terms existed."""
        values = {k: v for k, v in asdict(self).items() if k not in EXTRA_TERMS or v}
        if values["destroy_fill"] == "mean" or not self.destroy:
            del values["destroy_fill"]
        return values


#: Loss terms beyond the papers' (off unless weighted).
EXTRA_TERMS = ("destroy", "insert")

#: The destroying term's fill: the deletion curves' ``mean`` colour or ``black``, or ``both``: every
#: other removed image takes each, so one forward trains against both deletion fills.
DESTROY_FILLS = ("mean", "black", "both")


@dataclass
class LossTerms:
    """The weighted total and each unweighted term (what the log and the progress bar show)."""

    loss: torch.Tensor
    ce: torch.Tensor
    area: torch.Tensor
    tv: torch.Tensor
    destroy: torch.Tensor | None = None  # None while the term is off
    insert: torch.Tensor | None = None

    def logged(self) -> dict[str, torch.Tensor]:
        """The total and every term that is on, by name, in a fixed order (what a step's log record holds)."""
        named = {"loss": self.loss, "ce": self.ce, "area": self.area, "tv": self.tv, "destroy": self.destroy, "insert": self.insert}
        return {name: value for name, value in named.items() if value is not None}


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


def destroy_loss(removed_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean softmax probability of each target (N,) given the logits (N, classes) of its image with the
    map's region removed: near 0 when removing the region loses the class (Dabkowski & Gal's destroyer)."""
    logits = removed_logits if removed_logits.dtype == torch.float64 else removed_logits.float()  # float64 stays (gradcheck)
    return logits.softmax(dim=1).gather(1, targets[:, None]).mean()


def tame_loss(
    masked_logits: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    weights: LossWeights | None = None,
    removed_logits: torch.Tensor | None = None,
    inserted_logits: torch.Tensor | None = None,
) -> LossTerms:
    """The total loss from the masked-input logits (N, classes), their targets (N,) and all maps (B, K, h, w).

    ``removed_logits`` / ``inserted_logits`` (N, classes) feed the destroying and insertion terms; each
    counts only when given (the papers' total is computed exactly as without them otherwise).
    """
    weights = weights or LossWeights()
    ce = F.cross_entropy(masked_logits.float(), targets)
    area = area_loss(masks.float(), weights.area_eps, weights.area_power)
    tv = variation_loss(masks.float(), weights.tv_border)
    total = weights.ce * ce + weights.area * area + weights.tv * tv
    destroy = insert = None
    if removed_logits is not None:
        destroy = destroy_loss(removed_logits, targets)
        total = total + weights.destroy * destroy
    if inserted_logits is not None:
        insert = F.cross_entropy(inserted_logits.float(), targets)
        total = total + weights.insert * insert
    return LossTerms(total, ce, area, tv, destroy, insert)
