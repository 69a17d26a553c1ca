"""What each branch adds: Average Drop / Increase in Confidence for every combination of branches.

Branch toggles in the app must feel instant, but AD/IC needs forward passes of masked images. With a
handful of branches there are few combinations, so all of them are measured at once in one batched
call (a background job on the page) and each toggle only looks its row up: the TAME papers' branch
ablation, for one image.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..explainer import Explanation
from ..metrics import average_drop_increase
from .jobs import JobContext
from .models import LoadedModel

#: Up to this many branches every combination is measured (15 for 4); beyond, only the current one.
MAX_COMBINATIONS_BRANCHES = 4


@dataclass(frozen=True)
class AblationRow:
    """One combination of branches: the class probability on image x map and AD/IC in %.

    With one image, AD and IC are read off two probabilities per level: IC is 100 % when the kept
    part of the picture scores higher than the whole picture and 0 % otherwise, and AD is 0 % then
    (only drops count). ``kept`` holds those probabilities so the page can show them.
    """

    mask: tuple[bool, ...]
    masked_probability: float  # P(class | image x map): what the head is trained to keep high
    scores: dict[str, float]  # AD100, IC100, AD50, IC50, AD15, IC15
    clean_probability: float = float("nan")  # P(class | image)
    kept: dict[int, float] | None = None  # % of the map's pixels kept -> P(class | image x thresholded map)


def combinations(branches: int, current: Sequence[bool] | None = None) -> list[tuple[bool, ...]]:
    """Every mask with at least one branch on (all of them first), or just ``current`` when too many."""
    if branches > MAX_COMBINATIONS_BRANCHES:
        return [tuple(bool(b) for b in current)] if current is not None else [(True,) * branches]
    masks = [m for m in itertools.product((True, False), repeat=branches) if any(m)]
    return sorted(masks, key=lambda m: (-sum(m), [not b for b in m]))


def ablation_rows(
    model: LoadedModel, explanation: Explanation, masks: Sequence[Sequence[bool]], context: JobContext | None = None
) -> list[AblationRow]:
    """AD/IC of the explanation's (single image, first class) map under each branch mask, batched
    (stoppable at any forward when run as a job)."""
    if explanation.inputs.shape[0] != 1:
        raise ValueError("ablation is measured one image at a time")
    masks = [explanation.explainer.parse_branch_mask(mask) for mask in masks]
    count = len(masks)
    maps = torch.cat([explanation.with_branches(mask).maps[:, 0] for mask in masks])  # (count, H, W)
    images = explanation.inputs.expand(count, -1, -1, -1)
    classes = explanation.classes[:, 0].expand(count)
    with model.busy() as explainer:
        watching = context.watching(explainer.backbone) if context is not None else contextlib.nullcontext()
        with watching:
            result = average_drop_increase(
                explainer.backbone, images, maps, classes, clean_logits=explanation.logits.expand(count, -1)
            )
    per_image = result.per_image()
    full_map_row = result.fractions.index(1.0) if 1.0 in result.fractions else 0
    return [
        AblationRow(
            mask,
            float(result.masked[full_map_row, row]),
            {name: float(values[row]) for name, values in per_image.items()},
            float(result.clean[row]),
            {round(f * 100): float(result.masked[level, row]) for level, f in enumerate(result.fractions)},
        )
        for row, mask in enumerate(masks)
    ]


@dataclass(frozen=True)
class BranchTerms:
    """Each branch's signed term of one class's map, before the sigmoid, on one shared scale.

    The head's map is ``sigmoid(bias + sum of the terms)``, then scaled to [0, 1]: a positive term
    raises the map where it is positive, a negative one lowers it. Showing every term on the same
    symmetric scale keeps their sizes comparable (scaling each to its own range would paint every
    branch equally hot).
    """

    terms: np.ndarray  # (branches, H, W) float32 at the model input's size

    @property
    def scale(self) -> float:
        """The largest magnitude of any term: the shared scale's ends are -scale and +scale."""
        return float(np.abs(self.terms).max()) if self.terms.size else 0.0

    def own_scales(self) -> list[float]:
        """Each term's own largest magnitude: drawn on its own symmetric scale, a small term is still visible
        (white still means zero; the share says how much it moves compared with the others)."""
        return [float(np.abs(term).max()) if term.size else 0.0 for term in self.terms]

    def share(self) -> list[float]:
        """Each branch's share of the summed absolute terms (how much of the map it moves), adding up to 1."""
        sizes = np.abs(self.terms).sum(axis=(1, 2))
        total = float(sizes.sum())
        return [float(size / total) if total else 0.0 for size in sizes]


def branch_terms(explanation: Explanation) -> BranchTerms:
    """The signed branch terms of the (single-image) explanation's first class (:meth:`Explanation.branch_terms`)."""
    return BranchTerms(explanation.branch_terms()[0, 0].float().cpu().numpy().astype(np.float32))


#: What a branch sees, from its map's size relative to the other branches' (finest first).
SEES = ("fine detail", "parts", "whole object")


def branch_names(layers: Sequence[str], sizes: Sequence[tuple[int, int]]) -> list[str]:
    """Each branch named by what it sees, its layer and grid secondary: ``fine detail (blocks.4, 14×14)``.

    The branch with the largest map sees fine detail, the smallest the whole object, those between parts;
    equal sizes (a ViT's tokens) are told apart by depth, an earlier layer seeing finer detail.
    """
    order = sorted(range(len(layers)), key=lambda i: (-sizes[i][0] * sizes[i][1], i))
    words = {}
    for rank, index in enumerate(order):
        words[index] = SEES[0] if rank == 0 else SEES[2] if rank == len(order) - 1 else SEES[1]
    if len(layers) == 1:
        words[0] = "the one branch"
    return [f"{words[i]} ({layer}, {h}×{w})" for i, (layer, (h, w)) in enumerate(zip(layers, sizes))]


def feature_sizes(explanation: Explanation) -> list[tuple[int, int]]:
    """The (h, w) grid of each branch's feature map for this picture."""
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in explanation.branch_features]


def plain_reading(row: AblationRow, class_name: str) -> str:
    """What AD/IC mean for this picture, in one sentence: how the confidence in the class moves when only
    the map's area (and only its top 15 %) is kept."""

    def change(probability: float) -> str:
        if not row.clean_probability > 0:  # zero or not measured: nothing to compare with
            return f"is {probability:.1%}"
        if abs(probability - row.clean_probability) < 0.0005:
            return "stays the same"
        relative = (probability - row.clean_probability) / row.clean_probability
        direction = "drops" if relative < 0 else "rises"
        return f"{direction} by {abs(relative):.0%} ({row.clean_probability:.1%} → {probability:.1%})"

    sentence = f"Keeping only the map's area, the model's confidence in {class_name} {change(row.masked_probability)}"
    smallest = min(row.kept) if row.kept else None
    if smallest is not None and smallest < 100:
        sentence += f"; keeping only the map's top {smallest} % of pixels, it {change(row.kept[smallest])}"
    return sentence + ". AD measures the drops (lower is better), IC says whether it rose (higher is better)."


#: Branches that together move less of the map than this leave it nearly flat.
NEARLY_FLAT = 0.05


def masks_to_measure(
    model: LoadedModel, digest: str, class_index: int, mask: Sequence[bool]
) -> tuple[tuple, list[tuple[bool, ...]]]:
    """The Branches page's AD/IC job for ``mask``: its tag and the masks it measures. A head with few
    branches measures every combination once (one job serves every toggle); a bigger one the current
    mask alone (one job per mask)."""
    every_combination = len(mask) <= MAX_COMBINATIONS_BRANCHES
    tag = (model.key, digest, class_index, None if every_combination else mask)
    return tag, combinations(len(mask), mask)


def flat_map_warning(shares: Sequence[float], mask: Sequence[bool]) -> str | None:
    """Why the map looks flat, when it does: every branch off, or the ones on move less than
    :data:`NEARLY_FLAT` of it (``shares``: each branch's share, :meth:`BranchTerms.share`)."""
    if not any(mask):
        return "All branches are off: the map is the fuser's bias alone, flat."
    moved = sum(share for share, on in zip(shares, mask) if on)
    if moved < NEARLY_FLAT:
        return (
            f"The branches that are on move only {moved:.0%} of this map: it is nearly flat, and what shows "
            "is that small remainder stretched to the full colour range."
        )
    return None
