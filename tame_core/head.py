"""The TAME / T-TAME attention head: one branch per tapped layer, fused into one map per class.

Each branch is a 1x1 conv (C -> C), batch norm, a skip connection adding its input, and ReLU. Branch
outputs are upsampled bilinearly to the first branch's resolution (capped at 56), concatenated, and a
1x1 "fuser" conv turns them into one map per class. Because the fuser is linear in the concatenated
branch outputs, three things are cheap and exact:

* **class selection**: only the fuser rows of the requested classes are computed;
* **branch masking**: switching a branch off zeroes its fuser columns, so it contributes nothing;
* **branch contributions**: the map of class ``c`` is the bias plus one term per branch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError


@dataclass(frozen=True)
class BranchDesign:
    batch_norm: bool
    skip: bool
    activation: str  # "relu" or "sigmoid"


#: The papers' head and their ablation variants, by name.
VARIANTS: dict[str, BranchDesign] = {
    "tame": BranchDesign(batch_norm=True, skip=True, activation="relu"),
    "no_skip": BranchDesign(batch_norm=True, skip=False, activation="relu"),
    "no_bn": BranchDesign(batch_norm=False, skip=False, activation="relu"),
    "sigmoid": BranchDesign(batch_norm=True, skip=True, activation="sigmoid"),
}
DEFAULT_VARIANT = "tame"
MAX_RESOLUTION = 56


class Branch(nn.Module):
    """1x1 conv, batch norm, skip connection, activation: one per tapped layer."""

    def __init__(self, channels: int, design: BranchDesign) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels) if design.batch_norm else nn.Identity()
        self.skip = design.skip
        self.act = nn.ReLU() if design.activation == "relu" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return self.act(y + x if self.skip else y)


class TAMEHead(nn.Module):
    """Maps tapped feature maps to one (pre-sigmoid) map per class."""

    def __init__(
        self,
        channels: Sequence[int],
        num_classes: int,
        variant: str = DEFAULT_VARIANT,
        max_resolution: int = MAX_RESOLUTION,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise CheckpointError(f"unknown head variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be positive, got {list(channels)}")
        self.channels = tuple(int(c) for c in channels)
        self.num_classes = int(num_classes)
        self.variant = variant
        self.max_resolution = int(max_resolution)
        self.branches = nn.ModuleList(Branch(c, VARIANTS[variant]) for c in self.channels)
        self.fuser = nn.Conv2d(sum(self.channels), self.num_classes, kernel_size=1)
        ends = list(itertools.accumulate(self.channels))  # plain ints: the head can be built on the meta device
        self.slices = [slice(end - c, end) for c, end in zip(self.channels, ends)]

    @property
    def num_branches(self) -> int:
        return len(self.channels)

    def resolution(self, first_hw: Sequence[int]) -> tuple[int, int]:
        """The fused resolution: the first branch's, scaled down to at most ``max_resolution`` a side."""
        height, width = int(first_hw[0]), int(first_hw[1])
        scale = min(1.0, self.max_resolution / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def branch_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the branches and concatenate their outputs at one resolution: (B, sum C, h, w).

        This is the part of the head that does not depend on the class or the branch mask, so it is
        what an explanation keeps to answer another class or mask with the fuser alone.
        """
        if len(features) != self.num_branches:
            raise CheckpointError(f"head has {self.num_branches} branches but got {len(features)} feature maps")
        size = self.resolution(features[0].shape[-2:])
        outputs = []
        for branch, feature, channels in zip(self.branches, features, self.channels):
            if feature.shape[1] != channels:
                raise CheckpointError(f"head branch expects {channels} channels but the layer gives {feature.shape[1]}")
            out = branch(feature.to(self.fuser.weight.dtype))
            if tuple(out.shape[-2:]) != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            outputs.append(out)
        return torch.cat(outputs, dim=1)

    def fuser_weights(self, branch_mask: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
        """The fuser as a (num_classes, sum C) matrix, with the columns of switched-off branches zeroed."""
        weight = self.fuser.weight.flatten(1)
        if branch_mask is None:
            return weight
        mask = self.column_mask(branch_mask)
        return weight * mask

    def column_mask(self, branch_mask: Sequence[bool] | torch.Tensor) -> torch.Tensor:
        flags = torch.as_tensor(branch_mask, dtype=torch.bool).flatten().tolist()
        if len(flags) != self.num_branches:
            raise ValueError(f"branch mask needs {self.num_branches} flags, got {len(flags)}")
        repeats = torch.tensor(self.channels)
        columns = torch.repeat_interleave(torch.tensor(flags, dtype=self.fuser.weight.dtype), repeats)
        return columns.to(self.fuser.weight.device)

    def fuse(
        self,
        branch_features: torch.Tensor,
        classes: torch.Tensor | None = None,
        branch_mask: Sequence[bool] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pre-sigmoid class maps from :meth:`branch_features`.

        ``classes`` is ``None`` (all classes: (B, num_classes, h, w)), a 1-D tensor of K classes shared
        by the batch ((B, K, h, w)), or a (B, K) tensor of per-image classes ((B, K, h, w)). Only the
        fuser rows of the requested classes are computed.
        """
        weight = self.fuser_weights(branch_mask)
        bias = self.fuser.bias
        if classes is None:
            return F.conv2d(branch_features, weight[:, :, None, None], bias)
        classes = classes.to(weight.device)
        if classes.ndim == 1:
            return F.conv2d(branch_features, weight[classes][:, :, None, None], bias[classes])
        if classes.ndim != 2 or classes.shape[0] != branch_features.shape[0]:
            raise ValueError(f"classes must be (K,) or (B, K) with B={branch_features.shape[0]}, got {tuple(classes.shape)}")
        maps = torch.einsum("bchw,bkc->bkhw", branch_features, weight[classes])
        return maps + bias[classes][:, :, None, None]

    def branch_contributions(self, branch_features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Each branch's own term of the class maps, without bias: (B, K, num_branches, h, w).

        Summed over branches and added to the bias, they give :meth:`fuse`'s maps exactly.
        """
        weight = self.fuser.weight.flatten(1)
        classes = classes.to(weight.device)
        if classes.ndim == 1:
            classes = classes.expand(branch_features.shape[0], -1)
        rows = weight[classes]  # (B, K, sum C)
        terms = [
            torch.einsum("bchw,bkc->bkhw", branch_features[:, part], rows[:, :, part]) for part in self.slices
        ]
        return torch.stack(terms, dim=2)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        classes: torch.Tensor | None = None,
        branch_mask: Sequence[bool] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.fuse(self.branch_features(features), classes, branch_mask)

    def config(self) -> dict:
        """What it takes to rebuild this head (stored in checkpoint metadata)."""
        return {
            "channels": list(self.channels),
            "num_classes": self.num_classes,
            "variant": self.variant,
            "max_resolution": self.max_resolution,
        }
