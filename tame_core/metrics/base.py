"""What every faithfulness metric shares: directions, input checks, and batched scoring.

Metrics take a ``model`` that maps raw [0, 1] images (B, 3, H, W) to logits (a
:class:`~tame_core.backbones.Backbone`, or any module that does the same), the images, one map per
image (B, h, w) and the explained class of each image (B,). Everything stays on the images' device;
perturbed inputs are built chunk by chunk on that device and go through the model in batches, so a
metric never holds more than one batch of perturbed images at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from ..batching import class_vector, scores
from ..errors import EvaluationError
from ..maps import minmax_normalize, resize_maps

#: "neither" for a number read beside the others (a map's area), where no way is better.
Direction = Literal["lower", "higher", "neither"]


@dataclass(frozen=True)
class MetricSpec:
    """A reported number: its name, whether lower or higher is better, and what it measures."""

    name: str
    direction: Direction
    description: str

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` for this metric (never, for a "neither" one)."""
        if self.direction == "neither":
            return False
        return a < b if self.direction == "lower" else a > b

    @property
    def arrow(self) -> str:
        """``↓`` when lower is better, ``↑`` when higher is, nothing when neither: what table headings show."""
        return {"lower": "↓", "higher": "↑"}.get(self.direction, "")


@dataclass(frozen=True)
class MetricFamily:
    """Metrics whose names carry a number: ``AD50`` is Average Drop with 50% of pixels kept."""

    prefix: str
    direction: Direction
    description: str  # with ``{n}`` where the number goes

    def name(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def spec(self, n: int) -> MetricSpec:
        return MetricSpec(self.name(n), self.direction, self.description.format(n=n))


#: Every metric the default settings report, by name, in table order. Each metric module registers
#: its own (:func:`register_metric`, :func:`register_metric_family`) next to the code that computes it;
#: :func:`get_metric` also knows other levels of a family.
_METRICS: dict[str, MetricSpec] = {}
_FAMILIES: dict[str, MetricFamily] = {}

DEFAULT_FRACTIONS = (1.0, 0.5, 0.15)
DEFAULT_ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)


def register_metric(*specs: MetricSpec) -> None:
    """Make reported metrics known to :func:`get_metric` and :func:`list_metrics` (in table order)."""
    for spec in specs:
        _METRICS[spec.name] = spec


def register_metric_family(prefix: str, direction: Direction, description: str) -> MetricFamily:
    """A numbered family, known to :func:`get_metric` at every level; register its default levels with
    :func:`register_metric`."""
    family = _FAMILIES[prefix] = MetricFamily(prefix, direction, description)
    return family


def list_metrics() -> list[str]:
    """The metrics the default settings report, in table order: AD/IC, ROAD, curves, then the methods' costs (declared by :mod:`tame_core.methods`)."""
    return list(_METRICS)


def get_metric(name: str) -> MetricSpec:
    """The :class:`MetricSpec` of any reported name, numbered families included (``AD37``, ``LeRF60``)."""
    if name in _METRICS:
        return _METRICS[name]
    match = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
    if match is None or match[1] not in _FAMILIES:
        raise EvaluationError(f"unknown metric {name!r}; known: {', '.join(_METRICS)}")
    return _FAMILIES[match[1]].spec(int(match[2]))


def prepare(
    images01: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor | Sequence[int] | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check a metric's inputs; return the images, the maps min-max normalised at input size, the classes.

    Maps may come at any resolution (a 7x7 CAM, a 56x56 TAME map): each is min-max normalised and
    upsampled bilinearly to the input, on the images' device.
    """
    if not isinstance(images01, torch.Tensor) or images01.ndim != 4 or images01.shape[1] != 3:
        shape = tuple(images01.shape) if isinstance(images01, torch.Tensor) else type(images01).__name__
        raise EvaluationError(f"images must be a (B, 3, H, W) tensor of raw [0, 1] pixels, got {shape}")
    if not images01.is_floating_point():
        raise EvaluationError(f"images must be floats in [0, 1], got dtype {images01.dtype}")
    batch, _, height, width = images01.shape
    if not isinstance(maps, torch.Tensor):
        raise EvaluationError(f"maps must be a (B, H, W) tensor, got {type(maps).__name__}")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] != batch:
        raise EvaluationError(f"maps must be (B, H, W) with B={batch} (one per image), got {tuple(maps.shape)}")
    maps = maps.to(images01.device, torch.float32)
    if not bool(torch.isfinite(maps).all()):
        raise EvaluationError("maps hold NaN or infinite values")
    maps = resize_maps(minmax_normalize(maps), (height, width)).clamp_(0.0, 1.0)
    return images01, maps, class_vector(classes, batch, images01.device)


def clean_scores(
    model: nn.Module,
    images01: torch.Tensor,
    classes: torch.Tensor,
    batch_size: int,
    clean_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probability and top-1 on the unperturbed images, from ``clean_logits`` when the caller has them."""
    if clean_logits is None:
        return scores(model, images01.shape[0], lambda a, b: images01[a:b], classes, batch_size)
    if clean_logits.ndim != 2 or clean_logits.shape[0] != images01.shape[0]:
        raise EvaluationError(f"clean_logits must be (B, classes) with B={images01.shape[0]}, got {tuple(clean_logits.shape)}")
    logits = clean_logits.to(images01.device).float()
    return logits.softmax(dim=-1).gather(1, classes[:, None])[:, 0], logits.argmax(dim=-1)


def quantiles(maps: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Per-map quantiles (linear interpolation, as numpy's default) of (B, H, W) maps: (len(levels), B)."""
    flat = maps.flatten(1)
    q = torch.as_tensor(levels, dtype=flat.dtype, device=flat.device)
    # torch.quantile refuses inputs over 2**24 elements; one sort serves every level and any size.
    ordered = flat.sort(dim=1).values
    position = q * (flat.shape[1] - 1)
    low = position.floor().long()
    high = position.ceil().long()
    weight = (position - low.to(flat.dtype))[:, None]
    return ordered[:, low].T * (1 - weight) + ordered[:, high].T * weight


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in its map, 0 = most salient: (B, H*W) long.

    Ties keep raster order (stable sort), so the ranking, and every curve built on it, is reproducible.
    """
    flat = maps.flatten(1)
    order = flat.sort(dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def per_image_summary(per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over images of per-image values: how every metric's summary is formed."""
    return {name: float(values.float().mean()) for name, values in per_image.items()}
