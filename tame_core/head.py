"""The TAME / T-TAME attention head: one branch per tapped layer, fused into one map per class.

Each branch is a 1x1 conv (C -> C), batch norm, a skip connection adding its input, and ReLU. In the
papers, branch outputs are upsampled bilinearly to one resolution (the first branch's, capped at 56),
concatenated, and a 1x1 "fuser" conv turns them into one map per class. The fuser is linear and so is
bilinear upsampling, so this head **fuses first**: each branch's slice of the fuser is applied at that
branch's own resolution, and only the K requested class maps are upsampled and summed (the bias is
added last). The maps are the papers' maps; an explanation costs K upsampled maps per branch instead
of every branch channel, and the class-independent state it keeps is the branch outputs at native size.
Three things are then cheap and exact:

* **class selection**: only the fuser rows of the requested classes are computed;
* **branch masking**: a switched-off branch's term is left out of the sum;
* **branch contributions**: the map of class ``c`` is the bias plus one term per branch.

:class:`TiedTAMEHead` is the same head with a factorised fuser: class ``c``'s row is the classifier's
row ``c`` times a projection shared by all classes, so every image trains every class's map.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, LayerError

#: What users give as a branch mask: flags as a string (``"1,0,1"``), a list or tuple, a tensor or an array.
BranchMask = str | Sequence[bool] | torch.Tensor | np.ndarray

#: How a flag may be written in a string (``--option tame.branches=1,0,1`` or ``on,off,on``).
FLAG_WORDS = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}


def parse_branch_mask(mask: BranchMask | None, count: int, layers: Sequence[str] = ()) -> tuple[bool, ...] | None:
    """``mask`` as one on/off flag per branch (tapped layer), ``None`` (every branch on) for ``None``.

    The one check of a branch mask, whichever way it comes in (Python API, CLI option, app toggles):
    a string of flags (``"1,0,1"``, ``"on,off,on"``), a list or tuple of True/False, 1/0 or those words,
    or a bool or integer tensor or array. Anything else is one :class:`~tame_core.errors.LayerError`
    line; ``layers`` (the tapped layers' names) make the count's message name them.
    """
    if mask is None:
        return None
    if isinstance(mask, str):
        values: list[Any] = mask.split(",")
    elif isinstance(mask, (torch.Tensor, np.ndarray)):
        values = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).ravel().tolist()
    elif isinstance(mask, (list, tuple)):
        values = list(mask)
    else:
        raise LayerError(f"branch mask must be a list of True/False flags, one per branch, or a string like 1,0,1; got {mask!r}")
    flags = tuple(_branch_flag(value, mask) for value in values)
    if len(flags) != count:
        names = f" ({', '.join(layers)})" if layers else ""
        raise LayerError(f"branch mask has {len(flags)} flag{'s' if len(flags) != 1 else ''} but the head has {count} branches{names}")
    return flags


def _branch_flag(value: Any, mask: BranchMask) -> bool:
    """One flag of ``mask``: True/False, 1/0, or one of :data:`FLAG_WORDS`."""
    if isinstance(value, str):
        if value.strip().lower() in FLAG_WORDS:
            return FLAG_WORDS[value.strip().lower()]
    elif isinstance(value, (bool, np.bool_, numbers.Integral)) and value in (0, 1):
        return bool(value)
    shown = value.strip() if isinstance(value, str) else value
    within = f" in {mask!r}" if isinstance(mask, str) and mask.strip() != shown else ""
    raise LayerError(f"branch mask flags must be True/False, 1/0 or on/off, got {shown!r}{within}")


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

#: How class ``c``'s fuser row is made: ``class``, the papers' own row per class; ``tied``, the
#: classifier's row ``c`` times a projection shared by all classes; ``tied_residual``, that plus a
#: per-class residual row that starts at zero.
FUSERS = ("class", "tied", "tied_residual")


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
        fuser: nn.Module | None = None,
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
        self.fuser = fuser if fuser is not None else nn.Conv2d(sum(self.channels), self.num_classes, kernel_size=1)
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

    # --- the class-independent part -----------------------------------------------------------
    def branch_outputs(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run each branch on its tapped feature map, at that map's own size: [(B, C_i, h_i, w_i)].

        This is the part of the head that does not depend on the class or the branch mask, so it is
        what an explanation keeps to answer another class or mask with the fuser alone.
        """
        if len(features) != self.num_branches:
            raise CheckpointError(f"head has {self.num_branches} branches but got {len(features)} feature maps")
        dtype = self.branches[0].conv.weight.dtype
        outputs = []
        for branch, feature, channels in zip(self.branches, features, self.channels):
            if feature.shape[1] != channels:
                raise CheckpointError(f"head branch expects {channels} channels but the layer gives {feature.shape[1]}")
            outputs.append(branch(feature.to(dtype)))
        return outputs

    # --- the fuser ------------------------------------------------------------------------------
    def fuser_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole fuser as a (num_classes, sum C) matrix and a (num_classes,) bias."""
        return self.fuser.weight.flatten(1), self.fuser.bias

    def fuser_rows(self, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuser rows and biases of ``classes``: all (N, sum C), shared (K,) -> (K, sum C), per image (B, K) -> (B, K, sum C)."""
        weight, bias = self.fuser_matrix()
        if classes is None:
            return weight, bias
        classes = classes.to(weight.device)
        return weight[classes], bias[classes]

    def branch_flags(self, branch_mask: BranchMask | None) -> tuple[bool, ...]:
        """One on/off flag per branch (all on for ``None``), by :func:`parse_branch_mask`."""
        flags = parse_branch_mask(branch_mask, self.num_branches)
        return (True,) * self.num_branches if flags is None else flags

    def _terms(
        self, outputs: Sequence[torch.Tensor], weight: torch.Tensor, flags: Sequence[bool]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(branch index, that branch's term of the class maps at the fused size) for each branch that is on.

        ``weight`` holds the rows of the requested classes: (K, sum C) shared by the batch, or (B, K, sum C).
        """
        if len(outputs) != self.num_branches:
            raise CheckpointError(f"head has {self.num_branches} branches but got {len(outputs)} branch outputs")
        size = self.resolution(outputs[0].shape[-2:])
        for index, (output, part, on) in enumerate(zip(outputs, self.slices, flags)):
            if not on:
                continue
            rows = weight[..., part].to(output.dtype)
            if rows.ndim == 2:
                term = F.conv2d(output, rows[:, :, None, None])
            else:
                batch, _, height, width = output.shape
                term = torch.bmm(rows, output.flatten(2)).view(batch, rows.shape[1], height, width)
            if tuple(term.shape[-2:]) != size:
                term = F.interpolate(term, size=size, mode="bilinear", align_corners=False)
            yield index, term

    def fuse(
        self,
        outputs: Sequence[torch.Tensor],
        classes: torch.Tensor | None = None,
        branch_mask: BranchMask | None = None,
    ) -> torch.Tensor:
        """Pre-sigmoid class maps at the fused resolution from :meth:`branch_outputs`.

        ``classes`` is ``None`` (all classes: (B, num_classes, h, w)), a 1-D tensor of K classes shared
        by the batch ((B, K, h, w)), or a (B, K) tensor of per-image classes ((B, K, h, w)). Only the
        fuser rows of the requested classes are computed, each at its branch's own resolution.
        """
        batch = outputs[0].shape[0]
        if classes is not None and classes.ndim == 2 and classes.shape[0] != batch:
            raise ValueError(f"classes must be (K,) or (B, K) with B={batch}, got {tuple(classes.shape)}")
        if classes is not None and classes.ndim not in (1, 2):
            raise ValueError(f"classes must be (K,) or (B, K) with B={batch}, got {tuple(classes.shape)}")
        weight, bias = self.fuser_rows(classes)
        total: torch.Tensor | None = None
        for _, term in self._terms(outputs, weight, self.branch_flags(branch_mask)):
            total = term if total is None else total.add_(term)  # in place: add's backward needs neither side
        bias = bias.to(outputs[0].dtype)
        bias_maps = bias[..., None, None] if bias.ndim == 2 else bias[None, :, None, None]
        if total is None:
            size = self.resolution(outputs[0].shape[-2:])
            return bias_maps.expand(batch, bias.shape[-1], *size).clone()
        return total + bias_maps

    def branch_contributions(self, outputs: Sequence[torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        """Each branch's own term of the class maps, without bias: (B, K, num_branches, h, w).

        Summed over branches and added to the bias, they give :meth:`fuse`'s maps exactly.
        """
        if classes.ndim == 1:
            classes = classes.expand(outputs[0].shape[0], -1)
        weight, _ = self.fuser_rows(classes)
        return torch.stack([term for _, term in self._terms(outputs, weight, self.branch_flags(None))], dim=2)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        classes: torch.Tensor | None = None,
        branch_mask: BranchMask | None = None,
    ) -> torch.Tensor:
        return self.fuse(self.branch_outputs(features), classes, branch_mask)

    def config(self) -> dict:
        """What it takes to rebuild this head (stored in checkpoint metadata)."""
        return {
            "channels": list(self.channels),
            "num_classes": self.num_classes,
            "variant": self.variant,
            "max_resolution": self.max_resolution,
        }


class TiedFuser(nn.Module):
    """A fuser whose rows are the classifier's rows times one projection that all classes share.

    Class ``c``'s map is ``w_c . (P x + p) + s b_c + t`` (+ ``r_c . x`` with a residual), where ``x`` is
    the concatenated branch outputs at one position, ``w_c`` and ``b_c`` the frozen classifier's row
    (scaled by one constant, see below) and bias, and ``P``, ``p``, ``s``, ``t`` (and the rows ``r_c``)
    are learned. Every parameter but ``r_c``
    gets gradient from every image, whatever its class, so classes never seen in training learn too.
    """

    def __init__(self, inputs: int, class_weight: torch.Tensor, class_bias: torch.Tensor, residual: bool = False) -> None:
        super().__init__()
        classes, dim = class_weight.shape
        # Rows scaled to spectral norm 1: the projection's gradient sums over every targeted class, and
        # this keeps its effective step no larger than a per-class row's (P absorbs the constant).
        weight = class_weight.detach().float()
        self.register_buffer("class_scale", torch.linalg.matrix_norm(weight, ord=2).clamp_min(1e-12))
        self.register_buffer("class_weight", weight / self.class_scale)
        self.register_buffer("class_bias", class_bias.detach().float().clone())
        self.projection = nn.Parameter(torch.zeros(dim, inputs))
        self.offset = nn.Parameter(torch.zeros(dim))
        self.bias_scale = nn.Parameter(torch.ones(()))
        self.shift = nn.Parameter(torch.zeros(()))
        self.residual = nn.Parameter(torch.zeros(classes, inputs)) if residual else None

    def rows(self, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight rows and biases of ``classes`` (None: all), shaped as :meth:`TAMEHead.fuser_rows` says."""
        picked = self.class_weight if classes is None else self.class_weight[classes]
        class_bias = self.class_bias if classes is None else self.class_bias[classes]
        weight = picked @ self.projection
        if self.residual is not None:
            weight = weight + (self.residual if classes is None else self.residual[classes])
        bias = picked @ self.offset + self.bias_scale * class_bias + self.shift
        return weight, bias


class TiedTAMEHead(TAMEHead):
    """A TAME head with a :class:`TiedFuser`; :meth:`materialize` turns it into a plain :class:`TAMEHead`."""

    def __init__(
        self,
        channels: Sequence[int],
        class_weight: torch.Tensor,
        class_bias: torch.Tensor,
        variant: str = DEFAULT_VARIANT,
        max_resolution: int = MAX_RESOLUTION,
        residual: bool = False,
    ) -> None:
        fuser = TiedFuser(sum(int(c) for c in channels), class_weight, class_bias, residual)
        super().__init__(channels, class_weight.shape[0], variant, max_resolution, fuser)

    def fuser_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fuser.rows(None)

    def fuser_rows(self, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if classes is not None:
            classes = classes.to(self.fuser.class_weight.device)
        return self.fuser.rows(classes)

    @torch.no_grad()
    def materialize(self) -> TAMEHead:
        """The same head with its fuser written out as the papers' per-class 1x1 conv: identical maps."""
        plain = TAMEHead(self.channels, self.num_classes, self.variant, self.max_resolution)
        plain.branches.load_state_dict(self.branches.state_dict())
        weight, bias = self.fuser_matrix()
        plain.fuser.weight.copy_(weight[:, :, None, None])
        plain.fuser.bias.copy_(bias)
        return plain.to(weight.device).train(self.training)
