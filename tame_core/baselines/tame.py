"""TAME itself, through the same interface as the baselines: one backbone forward, the head, done."""

from __future__ import annotations

import torch

from .base import Method, Model, register_method


class TameMethod(Method):
    name = "tame"
    description = "TAME / T-TAME: the trained attention head (one forward pass)"
    needs_head = True

    def compute(self, explainer: Model, images01: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return explainer.explain_inputs(images01, classes[:, None]).maps[:, 0]


register_method(TameMethod())
