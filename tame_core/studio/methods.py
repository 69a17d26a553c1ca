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
import statistics
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np
import torch

from ..explainer import Explanation
from ..images import tensor_to_pixels
from ..methods import get_method
from ..methods.base import MethodResult, explain_with, is_cheap, timed_repeats, warm_up
from ..metrics import get_metric
from ..metrics.base import prepare
from ..metrics.curves import DEFAULT_STEPS, MODES, Baseline, CurveInputs, CurveResult, fill_colour, fills_text, stream_curve
from . import costs
from .jobs import JobContext
from .models import LoadedModel

#: The method every cost is compared with.
REFERENCE = "tame"
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
    relative: float = 1.0  # time / TAME's time, timed in turns with TAME (median of the rounds' ratios)

    @property
    def timing_note(self) -> str | None:
        """Why :attr:`milliseconds` alone says little (a busy machine, one tiny run), or None."""
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

    TAME is timed over several warm runs; every other method in turns with TAME (:func:`timed_in_turns`),
    so its ratio to TAME holds on a busy machine. The model is held while it runs and every forward checks
    for Stop.
    """
    key = subject.key("map", method)
    found = cache.get(key) if cache is not None else None
    if found is not None:
        return found
    model, explanation = subject.model, subject.explanation
    with model.busy() as explainer, _watching(context, explainer.backbone, on_forward):
        inputs, classes = explanation.inputs, explanation.classes[:, 0]
        if method == REFERENCE:
            result, relative = timed_repeats(explainer, inputs, classes, method), 1.0
        else:
            result, relative = timed_in_turns(explainer, inputs, classes, method)
    made = MethodMap(
        method,
        result.maps[0].detach().float(),
        result.seconds * 1000.0,
        int(result.forward_passes),
        int(result.backward_passes),
        tuple(result.repeats),
        relative,
    )
    if cache is not None:
        cache.put(key, made)
    return made


def timed_in_turns(
    explainer: Any, inputs: torch.Tensor, classes: torch.Tensor, method: str, rounds: int = 5, min_seconds: float = 0.25
) -> tuple[MethodResult, float]:
    """``method``'s result and its time relative to TAME's, the two run in turns so that a busy machine slows
    both alike: a cheap method alternates with TAME for ``rounds`` rounds (more, up to 20, until
    ``min_seconds`` passed) and the ratio is the median of the rounds' ratios; an expensive one runs once,
    between two TAME runs on each side. ``seconds`` is the method's median run."""

    def reference() -> float:
        return explain_with(explainer, inputs, classes, REFERENCE).seconds

    warm_up(explainer, inputs, classes, REFERENCE)
    if not is_cheap(method, explainer):
        before = [reference(), reference()]
        result = explain_with(explainer, inputs, classes, method)
        around = before + [reference(), reference()]
        result.repeats = (result.seconds,)
        return result, result.seconds / max(statistics.median(around), 1e-9)
    warm_up(explainer, inputs, classes, method)
    runs: list[MethodResult] = []
    ratios: list[float] = []
    while len(runs) < rounds or (sum(r.seconds for r in runs) < min_seconds and len(runs) < 20):
        theirs = reference()
        runs.append(explain_with(explainer, inputs, classes, method))
        ratios.append(runs[-1].seconds / max(theirs, 1e-9))
    seconds = tuple(r.seconds for r in runs)
    last = runs[-1]
    timed = MethodResult(last.maps, last.forward_passes, last.backward_passes, statistics.median(seconds), seconds)
    return timed, statistics.median(ratios)


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


def auc_table(points: Sequence[CurvePoint], steps: int) -> list[dict[str, str]]:
    """The AUC table as shown: each cell the AUC to three decimals, or a dash with the reason while its
    curve is being drawn (never an empty cell)."""
    rows = []
    for row in auc_rows(points):
        shown: dict[str, str] = {"method": str(row["method"])}
        for mode in MODES:
            auc = row[f"{mode}_auc"]
            drawn = sum(1 for p in points if p.method == row["method"] and p.mode == mode)
            reason = f"still drawing: {drawn} of {int(steps) + 1} points" if drawn else "waiting for its turn"
            shown[auc_title(mode)] = f"{auc:.3f}" if isinstance(auc, float) else f"– ({reason})"
        rows.append(shown)
    return rows


def auc_title(mode: str) -> str:
    """``deletion AUC (lower is better)``: a column title with the metric's direction."""
    return f"{mode} AUC ({auc_direction(mode)})"


def auc_direction(mode: str) -> str:
    """``"lower is better"`` for deletion, ``"higher is better"`` for insertion (from the metric registry)."""
    return f"{get_metric(f'{mode}_auc').direction} is better"


def cost_rows(maps: Sequence[MethodMap]) -> list[dict[str, object]]:
    """Compare's cost table, every cell a number: time relative to TAME first (it survives a busy machine),
    then the median time and the passes; ``timing`` says how the time was taken."""
    rows = []
    for result in maps:
        how = f"median of {len(result.repeats)} warm runs" if len(result.repeats) > 1 else "one run"
        if result.method != REFERENCE:
            how += ", in turns with TAME"
        note = result.timing_note
        rows.append(
            {
                "method": result.method,
                "× TAME time": result.relative,
                "ms": result.milliseconds,
                "forward passes": result.forward_passes,
                "backward passes": result.backward_passes,
                "timing": f"{how}; {note}" if note else how,
            }
        )
    return rows


def coinciding(maps: Sequence[MethodMap], tolerance: float = 1e-3) -> list[list[str]]:
    """Groups of methods whose maps are the same here (Grad-CAM, XGrad-CAM and HiRes-CAM can coincide on
    one layer): their curves lie on top of each other, which the page says rather than hide."""
    groups: list[list[MethodMap]] = []
    for result in maps:
        for group in groups:
            if torch.allclose(group[0].saliency, result.saliency, atol=tolerance, rtol=0):
                group.append(result)
                break
        else:
            groups.append([result])
    return [[m.method for m in group] for group in groups if len(group) > 1]


def coinciding_text(groups: Sequence[Sequence[str]]) -> str | None:
    """``gradcam, xgradcam and hirescam give the same map here: one curve hides the others.``"""
    if not groups:
        return None
    said = ["{} and {}".format(", ".join(group[:-1]), group[-1]) for group in groups]
    return "; ".join(said) + " give the same map here: their curves lie on top of each other."


def perturbed_image(
    explanation: Explanation, saliency: torch.Tensor, mode: str, step: int, steps: int, baseline: Baseline = None
) -> np.ndarray:
    """The picture as the curve's model saw it at ``step`` of ``steps`` (RGB uint8 at input size)."""
    images, maps, _ = prepare(explanation.inputs, saliency[None], explanation.classes[:, 0])
    inputs = CurveInputs(images, maps, steps, baseline, fill_colour(explanation.explainer.backbone))
    picture = inputs.build(mode, step, step + 1)[0]
    return tensor_to_pixels(picture)

