"""Deletion and insertion curves of TAME and the comparison methods on one picture, drawn as they come.

A Curves job records each point as a :class:`CurvePoint` as soon as it is computed, so the page draws
the curves point by point; the maps come from :func:`~.compare.method_map` (shared with Compare through
the session's :class:`~.result_cache.ResultCache`). The model is held one batch of a curve at a time,
so other sessions' explanations slip in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..explainer import Explanation
from ..images import tensor_to_pixels
from ..methods import get_method
from ..metrics import get_metric
from ..metrics.base import prepare
from ..metrics.curves import DEFAULT_STEPS, MODES, Baseline, CurveInputs, CurveResult, fill_colour, stream_curve
from . import costs
from .compare import ForwardProgress, method_map, watching
from .jobs import JobContext
from .models import LoadedModel
from .result_cache import ResultCache, Subject, curve_key, map_key


@dataclass(frozen=True)
class CurvePoint:
    method: str
    mode: str  # "deletion" or "insertion"
    fraction: float  # of pixels changed
    probability: float  # of the explained class


def _locked(model: LoadedModel, points: Iterator[tuple[float, float]], context: JobContext | None, on_forward=None):
    """Hold the model (and watch its forwards for Stop) only while each batch of a streamed curve is computed."""
    while True:
        with model.busy() as explainer, watching(context, explainer.backbone, on_forward):
            batch = next(points, None)
        if batch is None:
            return
        yield batch


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
    cached_maps = {m for m in todo if cache is not None and cache.get(map_key(subject, m)) is not None}
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
        if cache is None or cache.get(map_key(subject, method)) is None:
            total = total + costs.method_estimate(subject.model, method, subject.input_hw)
        total = total + costs.passes_estimate(subject.model, costs.curve_forwards(steps), input_hw=subject.input_hw)
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


def perturbed_image(
    explanation: Explanation, saliency: torch.Tensor, mode: str, step: int, steps: int, baseline: Baseline = None
) -> np.ndarray:
    """The picture as the curve's model saw it at ``step`` of ``steps`` (RGB uint8 at input size)."""
    images, maps, _ = prepare(explanation.inputs, saliency[None], explanation.classes[:, 0])
    inputs = CurveInputs(images, maps, steps, baseline, fill_colour(explanation.explainer.backbone))
    picture = inputs.build(mode, step, step + 1)[0]
    return tensor_to_pixels(picture)
