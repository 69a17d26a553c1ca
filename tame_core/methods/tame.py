"""TAME itself, through the same interface as the comparison methods: one backbone forward, the head, done."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import EvaluationError
from .base import Method, Model, register_method


def parse_branches(branches: str | Sequence[bool] | None, count: int) -> tuple[bool, ...] | None:
    """A branch mask from ``"1,0,1"`` / ``"on,off,on"`` (the CLI's ``--option tame.branches=1,0,1``) or a
    sequence of flags; ``None`` keeps every branch."""
    if branches is None:
        return None
    words = branches.split(",") if isinstance(branches, str) else list(branches)
    flags = []
    for word in words:
        text = str(word).strip().lower()
        if text in ("1", "on", "true"):
            flags.append(True)
        elif text in ("0", "off", "false"):
            flags.append(False)
        else:
            raise EvaluationError(f"branches must be on/off flags like 1,0,1; got {branches!r}")
    if len(flags) != count:
        raise EvaluationError(f"branches needs {count} flags (one per branch), got {len(flags)}")
    return tuple(flags)


@register_method
class TameMethod(Method):
    name = "tame"
    description = "TAME / T-TAME: the trained attention head (one forward pass)"
    needs_head = True

    def compute(
        self, explainer: Model, images01: torch.Tensor, classes: torch.Tensor, *, branches: str | Sequence[bool] | None = None
    ) -> torch.Tensor:
        """``branches``: switch branches off, e.g. ``"1,0,1"`` (default: all on)."""
        mask = parse_branches(branches, explainer.head.num_branches)
        return explainer.explain(images01, classes[:, None], branch_mask=mask, geometry="input").maps[:, 0]

