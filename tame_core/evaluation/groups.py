"""The metric groups an evaluation runs, in one table: what each costs in forwards and how it measures a batch.

A group is measured on one method's maps of a batch, with the clean logits the batch's one forward gave.
Groups are registered and queried like methods and metrics (:func:`register_metric_group`,
:func:`list_metric_groups`, :func:`get_metric_group`); the order of registration is the default order
(``tame evaluate --metrics``), in which a run measures them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import EvaluationError
from ..metrics import average_drop_increase, deletion_insertion, map_area, road
from ..metrics.area import AREA
from ..metrics.base import DEFAULT_FRACTIONS, DEFAULT_ROAD_PERCENTAGES
from ..metrics.curves import DEFAULT_STEPS


@dataclass(frozen=True)
class Measuring:
    """What a group's values depend on besides the batch: curve steps and fills, ROAD levels, perturbed images
    per forward (None: the device's default) and ROAD's noise seed. :meth:`EvaluationConfig.measuring` gives it."""

    steps: int = DEFAULT_STEPS
    fills: dict[str, str] | None = None
    road_percentages: tuple[int, ...] = DEFAULT_ROAD_PERCENTAGES
    batch_size: int | None = None
    seed: int = 0


#: measure(model, images, maps, classes, clean_logits, measuring) -> per-image values by metric name.
Measure = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Measuring], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class MetricGroup:
    """Metrics measured together: ``forwards(steps, road_percentages)`` per image and method, ``measure``,
    and ``imputations(road_percentages)``: the pictures per image and method it fills by imputation, whose
    solves cost about as much as the forwards (an estimate that counted forwards only fell short by a third)."""

    name: str
    description: str
    forwards: Callable[[int, Sequence[int]], int]
    measure: Measure
    imputations: Callable[[Sequence[int]], int] = lambda road_percentages: 0


_GROUPS: dict[str, MetricGroup] = {}


def register_metric_group(group: MetricGroup) -> MetricGroup:
    """Make ``group`` available by its name to evaluations, ``tame evaluate --metrics`` and the app."""
    if not group.name or group.name in _GROUPS:
        raise ValueError(f"metric group name {group.name!r} is empty or registered twice")
    _GROUPS[group.name] = group
    return group


def list_metric_groups() -> list[str]:
    """Metric group names in registration order: AD/IC, ROAD, deletion/insertion curves."""
    return list(_GROUPS)


def get_metric_group(name: str) -> MetricGroup:
    """The registered group called ``name``; an unknown name fails in one line, naming the groups."""
    if name not in _GROUPS:
        raise EvaluationError(f"unknown metric group {name!r}; choose from {', '.join(_GROUPS)}")
    return _GROUPS[name]


def _adic(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, clean: torch.Tensor,
          measuring: Measuring) -> dict[str, torch.Tensor]:
    values = average_drop_increase(model, images, maps, classes, batch_size=measuring.batch_size, clean_logits=clean).per_image()
    return {**values, AREA.name: map_area(images, maps)}


def _road(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, clean: torch.Tensor,
          measuring: Measuring) -> dict[str, torch.Tensor]:
    values: dict[str, torch.Tensor] = {}
    for order in ("morf", "lerf"):
        result = road(model, images, maps, classes, measuring.road_percentages, order, measuring.batch_size,
                      seed=measuring.seed, clean_logits=clean)
        values.update(result.per_image())
    return values


def _curves(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, clean: torch.Tensor,
            measuring: Measuring) -> dict[str, torch.Tensor]:
    return deletion_insertion(model, images, maps, classes, measuring.steps, measuring.fills, measuring.batch_size).per_image()


register_metric_group(MetricGroup(
    "adic", "Average Drop / Increase in Confidence at each kept fraction, and the map area to read them by",
    lambda steps, road_percentages: len(DEFAULT_FRACTIONS), _adic,
))
register_metric_group(MetricGroup(
    "road", "ROAD, most- and least-relevant-first, at each level",
    lambda steps, road_percentages: 2 * len(road_percentages), _road,
    imputations=lambda road_percentages: 2 * len(road_percentages),
))
register_metric_group(MetricGroup(
    "curves", "deletion and insertion curves",
    lambda steps, road_percentages: 2 * (int(steps) + 1), _curves,
))

#: Metric groups an evaluation can run (all by default).
METRIC_GROUPS = tuple(list_metric_groups())


def metric_forwards(groups: Sequence[str], steps: int, road_percentages: Sequence[int] = DEFAULT_ROAD_PERCENTAGES) -> int:
    """Forwards per image and method of the metric ``groups``: AD/IC levels, ROAD orders x levels, curve points."""
    return sum(get_metric_group(group).forwards(steps, road_percentages) for group in groups)


def metric_imputations(groups: Sequence[str], road_percentages: Sequence[int] = DEFAULT_ROAD_PERCENTAGES) -> int:
    """Imputed pictures per image and method of the metric ``groups`` (ROAD: orders x levels)."""
    return sum(get_metric_group(group).imputations(road_percentages) for group in groups)
