"""What an evaluation measures, in one checked value shared by ``tame evaluate``, the app and scripts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import EvaluationError
from ..methods import get_method, list_methods
from ..metrics.base import DEFAULT_ROAD_PERCENTAGES
from ..metrics.curves import DEFAULT_STEPS, Baseline, curve_fills
from ..splits import SPLITS
from .groups import METRIC_GROUPS, Measuring

#: Most deletion/insertion steps: each is two forwards per image, and a 224x224 input has 50,176 pixels.
MAX_CURVE_STEPS = 1_000


@dataclass(frozen=True)
class EvaluationConfig:
    """Which images, which methods, which metrics and how finely; checked when made, so a wrong name or
    value fails before any model loads.

    ``methods`` empty means every registered method. ``method_options`` passes keywords to a method
    (``{"rise": {"masks": 1000}}``); ``method_limits`` runs a method on the first N images only, and
    ``metric_limits`` a metric group (``{"road": 50}``). ``metric_batch_size`` is the number of perturbed
    images per forward (None: the metrics' default for the device); ``seed`` seeds the ROAD noise.
    ``baseline`` becomes the checked fill of each curve, ``{"deletion": "mean", "insertion": "blur"}``
    by default (:func:`~tame_core.metrics.curves.curve_fills`); the run's settings (and so a resume) include it.
    """

    data: str
    methods: tuple[str, ...] = ()
    split: str = "all"
    list_file: str | None = None
    limit: int | None = None
    batch_size: int = 8
    metrics: tuple[str, ...] = METRIC_GROUPS
    steps: int = DEFAULT_STEPS
    baseline: Baseline = None  # each curve's fill: None (RISE's), "blur" (both), "deletion=black", {...}
    road_percentages: tuple[int, ...] = DEFAULT_ROAD_PERCENTAGES
    method_options: Mapping[str, Mapping[str, Any]] | None = field(default_factory=dict)
    method_limits: Mapping[str, int] | None = field(default_factory=dict)
    metric_limits: Mapping[str, int] | None = field(default_factory=dict)
    metric_batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        def assign(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        assign("data", str(os.fspath(self.data)))
        assign("list_file", None if self.list_file is None else str(os.fspath(self.list_file)))
        methods = tuple(self.methods) or tuple(list_methods())
        for method in methods:
            get_method(method)  # unknown names fail with a suggestion
        assign("methods", methods)
        assign("metrics", tuple(self.metrics))
        unknown = sorted(set(self.metrics) - set(METRIC_GROUPS))
        if unknown or not self.metrics:
            raise EvaluationError(f"unknown metric group {unknown[0] if unknown else ''!r}; choose from {', '.join(METRIC_GROUPS)}")
        assign("baseline", curve_fills(self.baseline))
        if self.split not in SPLITS:
            raise EvaluationError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.batch_size < 1:
            raise EvaluationError(f"batch size must be at least 1, got {self.batch_size}")
        if not 1 <= self.steps <= MAX_CURVE_STEPS:
            raise EvaluationError(f"curve steps must be from 1 to {MAX_CURVE_STEPS}, got {self.steps}")
        options = {m: dict((self.method_options or {}).get(m, {})) for m in methods}  # None: no options
        for method, given in options.items():
            get_method(method).check_options(given)
        assign("method_options", options)
        assign("method_limits", {m: int(n) for m, n in (self.method_limits or {}).items() if m in methods})
        group_limits = {g: int(n) for g, n in (self.metric_limits or {}).items()}
        if set(group_limits) - set(METRIC_GROUPS):
            raise EvaluationError(f"unknown metric group {sorted(set(group_limits) - set(METRIC_GROUPS))[0]!r} in the limits")
        assign("metric_limits", group_limits)
        assign("road_percentages", tuple(int(p) for p in self.road_percentages))

    def measuring(self) -> Measuring:
        """What the metric groups' values depend on besides the batch."""
        return Measuring(self.steps, self.baseline, self.road_percentages, self.metric_batch_size, self.seed)

