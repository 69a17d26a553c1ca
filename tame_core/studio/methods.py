"""TAME against the comparison methods on one picture: maps with their cost, and live deletion/insertion curves.

The work runs as background jobs (:mod:`.jobs`): each method's map is a :class:`MethodMap` record
and each curve point a :class:`CurvePoint` record as soon as it is computed, so the page can draw
the curves point by point. Every backbone run holds the model (:meth:`LoadedModel.busy`) one batch at
a time, so other sessions' explanations slip in between, and checks the job's stop flag in every
forward (:meth:`JobContext.watching`), so Stop takes effect within a network block.

Finished maps and curves go into the session's :class:`ResultCache`, keyed by model, picture, class,
method (and curve settings): ticking another baseline computes that baseline only, and Compare and
the curves share the maps.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np
import torch

from ..explainer import Explanation
from ..images import tensor_to_pixels
from ..methods import get_method
from ..methods.base import timed_repeats
from ..metrics import METRICS
from ..metrics.base import prepare
from ..metrics.curves import DEFAULT_STEPS, MODES, Baseline, CurveInputs, CurveResult, fill_colour, fills_text, stream_curve
from . import costs
from .jobs import JobContext
from .models import LoadedModel

#: Work estimated to take longer than this waits for the user's click (with the estimate on the button);
#: shorter work starts at once, its estimate in the job's name.
AUTO_START_SECONDS = 30.0


@dataclass(frozen=True)
class MethodMap:
    """One method's map of the picture, (H, W) in [0, 1] at the model input's size, and what it cost."""

    method: str
    saliency: torch.Tensor
    milliseconds: float  # the method's own work, warm (the median of ``repeats`` for cheap methods)
    forward_passes: int
    backward_passes: int
    repeats: tuple[float, ...] = ()  # seconds of each timed run

    @property
    def timing_note(self) -> str | None:
        """Why :attr:`milliseconds` is not worth printing, or None."""
        return costs.timing_note(self.milliseconds / 1000.0, self.repeats)


@dataclass(frozen=True)
class CurvePoint:
    method: str
    mode: str  # "deletion" or "insertion"
    fraction: float  # of pixels changed
    probability: float  # of the explained class


class ResultCache:
    """A session's finished maps and curves, least recently used dropped first (thread-safe)."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True, eq=False)
class Subject:
    """What Compare and the curves explain: a model, a picture (by content hash) and one class of it."""

    model: LoadedModel
    digest: str
    explanation: Explanation  # the picture explained for the class (one image, first class)

    @property
    def class_index(self) -> int:
        return int(self.explanation.classes[0, 0])

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.explanation.inputs.shape[-2]), int(self.explanation.inputs.shape[-1])

    def key(self, *parts: Hashable) -> tuple:
        """A cache key for a result about this subject."""
        return (self.model.key, self.digest, self.class_index, *parts)


def _watching(context: JobContext | None, model: torch.nn.Module, on_forward: Callable[[int], None] | None = None):
    return context.watching(model, on_forward) if context is not None else contextlib.nullcontext()


def method_map(
    subject: Subject,
    method: str,
    context: JobContext | None = None,
    cache: ResultCache | None = None,
    on_forward: Callable[[int], None] | None = None,
) -> MethodMap:
    """``method``'s map of the subject, from the cache or computed and timed as the method's own work.

    A cheap method is warmed up and timed over several runs (again if the runs were too scattered);
    an expensive one runs once. The model is held while it runs and every forward checks for Stop.
    """
    key = subject.key("map", method)
    found = cache.get(key) if cache is not None else None
    if found is not None:
        return found
    model, explanation = subject.model, subject.explanation
    with model.busy() as explainer, _watching(context, explainer.backbone, on_forward):
        inputs, classes = explanation.inputs, explanation.classes[:, 0]
        result = timed_repeats(explainer, inputs, classes, method)
        if len(result.repeats) > 1 and costs.timing_note(result.seconds, result.repeats):
            result = timed_repeats(explainer, inputs, classes, method)  # one more try on a calmer machine
    made = MethodMap(
        method,
        result.maps[0].detach().float(),
        result.seconds * 1000.0,
        int(result.forward_passes),
        int(result.backward_passes),
        tuple(result.repeats),
    )
    if cache is not None:
        cache.put(key, made)
    return made


class ForwardProgress:
    """Turns a job's forward passes into its progress bar: ``done`` of ``total`` expected forwards."""

    def __init__(self, context: JobContext, total: int) -> None:
        self.context = context
        self.total = max(1, int(total))
        self.done = 0  # forwards of finished parts
        self.part = 0  # forwards of the current part so far
        self.expected = 0  # forwards the current part should take
        self.label = ""

    def begin(self, label: str, expected: int) -> "ForwardProgress":
        self.done += min(self.part, self.expected) if self.expected else 0
        self.part, self.expected, self.label = 0, int(expected), label
        self._report()
        return self

    def __call__(self, images: int) -> None:
        self.part += images
        self._report()

    def _report(self) -> None:
        current = min(self.part, self.expected)
        detail = f": {current:,} of {self.expected:,} forward passes" if self.expected > 1 else ""
        self.context.progress((self.done + current) / self.total, f"{self.label}{detail}")


def compare_methods(
    subject: Subject, methods: Sequence[str], context: JobContext, cache: ResultCache | None = None
) -> list[MethodMap]:
    """Each method's map in turn (cached ones are not recomputed), recorded as it is done (a Compare job)."""
    explainer = subject.model.explainer
    todo = [m for m in methods if cache is None or cache.get(subject.key("map", m)) is None]
    expected = {m: get_method(m).expected_passes(explainer)[0] for m in todo}
    progress = ForwardProgress(context, sum(expected.values()))
    done = []
    for position, method in enumerate(methods):
        context.check_stop()
        if method in expected:
            progress.begin(f"Running {method} ({todo.index(method) + 1}/{len(todo)})", expected[method])
        result = method_map(subject, method, context, cache, progress if method in expected else None)
        context.record(result)
        done.append(result)
    return done


def compare_estimate(subject: Subject, methods: Sequence[str], cache: ResultCache | None = None) -> costs.Estimate:
    """What computing the maps not yet in ``cache`` will cost."""
    total = costs.Estimate(0)
    for method in methods:
        if cache is None or cache.get(subject.key("map", method)) is None:
            total = total + costs.method_estimate(subject.model, method, subject.input_hw)
    return total


def _locked(model: LoadedModel, points: Iterator[tuple[float, float]], context: JobContext | None, on_forward=None):
    """Hold the model (and watch its forwards for Stop) only while each batch of a streamed curve is computed."""
    while True:
        with model.busy() as explainer, _watching(context, explainer.backbone, on_forward):
            batch = next(points, None)
        if batch is None:
            return
        yield batch


def curve_key(subject: Subject, method: str, steps: int, baseline: Baseline) -> tuple:
    return subject.key("curve", method, int(steps), fills_text(baseline))


def curve_points(
    subject: Subject,
    methods: Sequence[str],
    context: JobContext,
    steps: int = DEFAULT_STEPS,
    baseline: Baseline = None,
    cache: ResultCache | None = None,
) -> dict[str, CurveResult]:
    """Deletion and insertion curves of each method's map, point by point (a Curves job's work).

    Curves already in ``cache`` are not recomputed; each finished one is stored there.
    """
    model, explanation = subject.model, subject.explanation
    image, class_index = explanation.inputs[0], subject.class_index
    todo = [m for m in methods if cache is None or cache.get(curve_key(subject, m, steps, baseline)) is None]
    cached_maps = {m for m in todo if cache is not None and cache.get(subject.key("map", m)) is not None}
    map_forwards = {m: 0 if m in cached_maps else get_method(m).expected_passes(model.explainer)[0] for m in todo}
    progress = ForwardProgress(context, sum(map_forwards.values()) + len(todo) * costs.curve_forwards(steps))
    points: list[CurvePoint] = []
    for method in todo:
        context.check_stop()
        progress.begin(f"{method}: computing the map", map_forwards[method])
        found = method_map(subject, method, context, cache, progress)
        context.record(found)
        mine: list[CurvePoint] = []
        for mode in MODES:
            progress.begin(f"{method}: {mode} curve", int(steps) + 1)
            stream = stream_curve(model.explainer.backbone, image, found.saliency, class_index, mode, steps, baseline)
            for fraction, probability in _locked(model, stream, context, progress):
                point = CurvePoint(method, mode, fraction, probability)
                context.record(point)
                mine.append(point)
        points.extend(mine)
        if cache is not None:
            cache.put(curve_key(subject, method, steps, baseline), tuple(mine))
    return curve_results(curves_so_far(subject, methods, steps, baseline, cache, points))


def curves_estimate(
    subject: Subject, methods: Sequence[str], steps: int, cache: ResultCache | None = None, baseline: Baseline = None
) -> costs.Estimate:
    """What computing the curves not yet in ``cache`` (and the maps they need) will cost."""
    total = costs.Estimate(0)
    for method in methods:
        if cache is not None and cache.get(curve_key(subject, method, steps, baseline)) is not None:
            continue
        if cache is None or cache.get(subject.key("map", method)) is None:
            total = total + costs.method_estimate(subject.model, method, subject.input_hw)
        pixels = subject.input_hw[0] * subject.input_hw[1]
        total = total + costs.passes_estimate(subject.model, costs.curve_forwards(steps), pixels=pixels)
    return total


def curves_so_far(
    subject: Subject,
    methods: Sequence[str],
    steps: int,
    baseline: Baseline,
    cache: ResultCache | None,
    live: Sequence[Any] = (),
) -> list[CurvePoint]:
    """Every point to draw: finished curves from ``cache``, the rest from a running job's records ``live``."""
    points: list[CurvePoint] = []
    for method in methods:
        finished = cache.get(curve_key(subject, method, steps, baseline)) if cache is not None else None
        if finished is not None:
            points.extend(finished)
        else:
            points.extend(p for p in live if isinstance(p, CurvePoint) and p.method == method)
    return points


def maps_so_far(
    subject: Subject, methods: Sequence[str], cache: ResultCache | None, live: Sequence[Any] = ()
) -> list[MethodMap]:
    """The maps ready to show, in ``methods`` order: cached ones and those a running job has recorded."""
    recorded = {r.method: r for r in live if isinstance(r, MethodMap)}
    found = []
    for method in methods:
        result = (cache.get(subject.key("map", method)) if cache is not None else None) or recorded.get(method)
        if result is not None:
            found.append(result)
    return found


def missing(subject: Subject, methods: Sequence[str], cache: ResultCache, *curve: Hashable) -> list[str]:
    """Methods whose map (or, given ``steps, baseline``, whose curves) are not in the cache yet."""
    if curve:
        return [m for m in methods if cache.get(curve_key(subject, m, *curve)) is None]
    return [m for m in methods if cache.get(subject.key("map", m)) is None]


def curve_results(points: Sequence[CurvePoint]) -> dict[str, CurveResult]:
    """The points so far as one :class:`CurveResult` per method; a curve still being drawn is NaN-padded."""
    by_method: dict[str, dict[str, list[CurvePoint]]] = {}
    for point in points:
        by_method.setdefault(point.method, {}).setdefault(point.mode, []).append(point)
    results = {}
    for method, curves in by_method.items():
        longest = max(curves.values(), key=len)
        fractions = torch.tensor([point.fraction for point in longest])
        rows = {}
        for mode in MODES:
            values = [point.probability for point in curves.get(mode, [])]
            rows[mode] = torch.tensor([values + [float("nan")] * (len(longest) - len(values))])
        results[method] = CurveResult(fractions, rows["deletion"], rows["insertion"])
    return results


def auc_rows(points: Sequence[CurvePoint]) -> list[dict[str, object]]:
    """Deletion and insertion AUC per method (None until that curve is complete)."""
    rows = []
    for method, result in curve_results(points).items():
        row: dict[str, object] = {"method": method}
        for mode, auc in (("deletion", result.deletion_auc), ("insertion", result.insertion_auc)):
            complete = len(result.fractions) > 1 and float(result.fractions[-1]) >= 1.0 and bool(torch.isfinite(auc).all())
            row[f"{mode}_auc"] = float(auc[0]) if complete else None
        rows.append(row)
    return rows


def auc_direction(mode: str) -> str:
    """``"lower is better"`` for deletion, ``"higher is better"`` for insertion (from the metric registry)."""
    return f"{METRICS[f'{mode}_auc'].direction} is better"


def cost_rows(maps: Sequence[MethodMap]) -> list[dict[str, object]]:
    """Compare's cost table: time (None where it is noisy, with the reason), passes, and time relative to TAME."""
    tame = next((m for m in maps if m.method == "tame" and m.timing_note is None and m.milliseconds), None)
    rows = []
    for result in maps:
        note = result.timing_note
        relative = None if note or tame is None else result.milliseconds / tame.milliseconds
        rows.append(
            {
                "method": result.method,
                "ms": None if note else result.milliseconds,
                "forward passes": result.forward_passes,
                "backward passes": result.backward_passes,
                "× TAME time": relative,
                "timing": note or (f"median of {len(result.repeats)} warm runs" if len(result.repeats) > 1 else "one run"),
            }
        )
    return rows


def perturbed_image(
    explanation: Explanation, saliency: torch.Tensor, mode: str, step: int, steps: int, baseline: Baseline = None
) -> np.ndarray:
    """The picture as the curve's model saw it at ``step`` of ``steps`` (RGB uint8 at input size)."""
    images, maps, _ = prepare(explanation.inputs, saliency[None], explanation.classes[:, 0])
    inputs = CurveInputs(images, maps, steps, baseline, fill_colour(explanation.explainer.backbone))
    picture = inputs.build(mode, step, step + 1)[0]
    return tensor_to_pixels(picture)

