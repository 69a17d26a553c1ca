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
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from ..errors import EvaluationError
from ..maps import minmax_normalize, resize_maps

Direction = Literal["lower", "higher"]

#: Builds the perturbed inputs for rows ``start:stop`` of a metric's stream of perturbed images.
RowBuilder = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A reported number: its name, whether lower or higher is better, and what it measures."""

    name: str
    direction: Direction
    description: str

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` for this metric."""
        return a < b if self.direction == "lower" else a > b


#: Metric families whose names carry a number: ``AD50`` is Average Drop with 50% of pixels kept.
_FAMILIES: dict[str, tuple[Direction, str]] = {
    "AD": ("lower", "Average Drop (%) with {n}% of the map's pixels kept"),
    "IC": ("higher", "Increase in Confidence (% of images) with {n}% of the map's pixels kept"),
    "MoRF": ("lower", "ROAD most-relevant-first: % of images whose top-1 survives removing {n}% of pixels"),
    "LeRF": ("higher", "ROAD least-relevant-first: % of images whose top-1 survives removing {n}% of pixels"),
}

_FIXED: tuple[MetricSpec, ...] = (
    MetricSpec("MoRF", "lower", "ROAD most-relevant-first: top-1 agreement (%) averaged over the removal levels"),
    MetricSpec("LeRF", "higher", "ROAD least-relevant-first: top-1 agreement (%) averaged over the removal levels"),
    MetricSpec("MoRF_dprob", "lower", "ROAD most-relevant-first: mean change of the class probability (imputed - clean)"),
    MetricSpec("LeRF_dprob", "higher", "ROAD least-relevant-first: mean change of the class probability (imputed - clean)"),
    MetricSpec("deletion_auc", "lower", "area under the class probability as the most salient pixels are deleted"),
    MetricSpec("insertion_auc", "higher", "area under the class probability as the most salient pixels are inserted"),
    MetricSpec("ms_per_image", "lower", "wall time of the explanation method per image (milliseconds)"),
    MetricSpec("forward_passes", "lower", "backbone forward passes per image made by the explanation method"),
    MetricSpec("backward_passes", "lower", "backward passes per image made by the explanation method"),
)

DEFAULT_FRACTIONS = (1.0, 0.5, 0.15)
DEFAULT_ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)


def spec_for(name: str) -> MetricSpec:
    """The :class:`MetricSpec` of any reported name, numbered families included (``AD37``, ``LeRF60``)."""
    for spec in _FIXED:
        if spec.name == name:
            return spec
    match = re.fullmatch(r"(AD|IC|MoRF|LeRF)(\d+)", name)
    if match is None:
        raise EvaluationError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    direction, what = _FAMILIES[match[1]]
    return MetricSpec(name, direction, what.format(n=int(match[2])))


def default_metric_names() -> list[str]:
    """The names the default settings report, in table order."""
    adic = [f"{kind}{round(f * 100)}" for f in DEFAULT_FRACTIONS for kind in ("AD", "IC")]
    road = [f"{order}{p}" for order in ("MoRF", "LeRF") for p in DEFAULT_ROAD_PERCENTAGES]
    return [*adic, "MoRF", "LeRF", *road, *(spec.name for spec in _FIXED if spec.name not in ("MoRF", "LeRF"))]


#: Every metric the default settings report, by name; :func:`spec_for` also knows other levels.
METRICS: dict[str, MetricSpec] = {name: spec_for(name) for name in default_metric_names()}


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


def class_vector(classes: torch.Tensor | Sequence[int] | int, batch: int, device: torch.device) -> torch.Tensor:
    """The explained class of each image as a (B,) long tensor on ``device``."""
    tensor = torch.as_tensor(classes, device=device)
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.ndim != 1 or tensor.shape[0] != batch or tensor.is_floating_point():
        raise EvaluationError(f"classes must be one integer class per image ({batch}), got shape {tuple(tensor.shape)}")
    return tensor.long()


def default_batch_size(device: torch.device) -> int:
    """Perturbed images per forward when the caller gives none: big on accelerators, small on a CPU.

    A CPU forward is fastest per image when a batch's activations stay in cache: Lite0 at 224 px on
    this project's 2-core machine (32 MiB L3) took 12-20 ms per image at batch 2-4 against 29 at 8
    and 36 at 32 (``benchmarks/bench_methods.py`` shows the effect on ROAD).
    """
    return 256 if device.type == "cuda" else 4


def check_batch_size(batch_size: int | None, device: torch.device) -> int:
    if batch_size is None:
        return default_batch_size(device)
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def iter_scores(
    model: nn.Module, rows: int, build: RowBuilder, classes: torch.Tensor, batch_size: int
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Forward rows ``0..rows`` built by ``build`` in batches; yield (start, stop, class prob, top-1).

    ``classes`` (rows,) is the class whose softmax probability is read from each row.
    """
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            stop = min(rows, start + batch_size)
            logits = model(build(start, stop)).float()
            probs = logits.softmax(dim=-1)
            yield start, stop, probs.gather(1, classes[start:stop, None])[:, 0], logits.argmax(dim=-1)


def scores(
    model: nn.Module, rows: int, build: RowBuilder, classes: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of :func:`iter_scores` at once: (class probabilities (rows,), top-1 classes (rows,))."""
    chunks = list(iter_scores(model, rows, build, classes, batch_size))
    return torch.cat([c[2] for c in chunks]), torch.cat([c[3] for c in chunks])


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
