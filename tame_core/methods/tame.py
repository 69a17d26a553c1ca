"""TAME itself, through the same interface as the comparison methods: one backbone forward, the head, done."""

from __future__ import annotations

import torch

from ..head import BranchMask
from .base import Method, Model, register_method


@register_method
class TameMethod(Method):
    name = "tame"
    description = "TAME / T-TAME: the trained attention head (one forward pass)"
    needs_head = True

    def compute(self, explainer: Model, images01: torch.Tensor, classes: torch.Tensor, *, branches: BranchMask | None = None) -> torch.Tensor:
        """``branches``: switch branches off, e.g. ``"1,0,1"`` or ``"on,off,on"`` (the CLI's
        ``--option tame.branches=1,0,1``; default: all on), read by :func:`~tame_core.head.parse_branch_mask`."""
        return explainer.explain(images01, classes[:, None], branch_mask=branches, geometry="input").maps[:, 0]

