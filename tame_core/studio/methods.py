"""TAME against the baselines on one picture: maps with their cost, and live deletion/insertion curves.

The work runs as background jobs (:mod:`.jobs`): each method's map is a :class:`MethodMap` record
and each curve point a :class:`CurvePoint` record as soon as it is computed, so the page can draw
the curves point by point. Every backbone run holds the model (:meth:`LoadedModel.busy`) one batch at
a time, so other sessions' explanations slip in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..explainer import Explanation
from ..metrics import METRICS
from ..metrics.base import prepare
from ..metrics.curves import MODES, CurveInputs, CurveResult, stream_curve
from .jobs import JobContext
from .models import LoadedModel

#: Deletion/insertion points per curve (plus the start) unless the user picks another number.
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class MethodMap:
    """One method's map of the picture, (H, W) in [0, 1] at the model input's size, and what it cost."""

    method: str
    saliency: torch.Tensor
    milliseconds: float
    forward_passes: int
    backward_passes: int


@dataclass(frozen=True)
class CurvePoint:
    method: str
    mode: str  # "deletion" or "insertion"
    fraction: float  # of pixels changed
    probability: float  # of the explained class


def method_map(model: LoadedModel, method: str, explanation: Explanation, **options: object) -> MethodMap:
    """``method``'s map for the explanation's picture and first class (holding the model while it runs)."""
    from ..baselines import explain_with

    with model.busy() as explainer:
        result = explain_with(method, explainer, explanation.inputs, explanation.classes[:, 0], **options)
    return MethodMap(
        method,
        result.maps[0].detach().float(),
        result.seconds * 1000.0,
        int(result.forward_passes),
        int(result.backward_passes),
    )


def compare_methods(
    model: LoadedModel, explanation: Explanation, methods: Sequence[str], context: JobContext
) -> list[MethodMap]:
    """Each method's map in turn, recorded as it is done (a Compare job's work)."""
    done = []
    for position, method in enumerate(methods):
        context.check_stop()
        context.progress(position / len(methods), f"Running {method} ({position + 1}/{len(methods)})")
        result = method_map(model, method, explanation)
        context.record(result)
        done.append(result)
    return done


def _locked(model: LoadedModel, points: Iterator[tuple[float, float]]) -> Iterator[tuple[float, float]]:
    """Hold the model only while each batch of a streamed curve is computed."""
    while True:
        with model.busy():
            batch = next(points, None)
        if batch is None:
            return
        yield batch


def curve_points(
    model: LoadedModel,
    explanation: Explanation,
    methods: Sequence[str],
    context: JobContext,
    steps: int = DEFAULT_STEPS,
    baseline: str = "blur",
) -> dict[str, CurveResult]:
    """Deletion and insertion curves of each method's map, point by point (a Curves job's work)."""
    image, class_index = explanation.inputs[0], int(explanation.classes[0, 0])
    total = len(methods) * len(MODES) * (steps + 1)
    points: list[CurvePoint] = []
    for method in methods:
        context.check_stop()
        context.progress(len(points) / total, f"{method}: computing the map")
        found = method_map(model, method, explanation)
        context.record(found)
        for mode in MODES:
            context.progress(len(points) / total, f"{method}: {mode} curve")
            stream = stream_curve(model.explainer.backbone, image, found.saliency, class_index, mode, steps, baseline)
            for fraction, probability in _locked(model, stream):
                context.check_stop()
                point = CurvePoint(method, mode, fraction, probability)
                context.record(point)
                points.append(point)
                context.progress(len(points) / total)
    return curve_results(points)


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


def perturbed_image(
    explanation: Explanation, saliency: torch.Tensor, mode: str, step: int, steps: int, baseline: str = "blur"
) -> np.ndarray:
    """The picture as the curve's model saw it at ``step`` of ``steps`` (RGB uint8 at input size)."""
    images, maps, _ = prepare(explanation.inputs, saliency[None], explanation.classes[:, 0])
    inputs = CurveInputs(images, maps, steps, baseline)
    picture = inputs.build(mode, step, step + 1)[0]
    return (picture.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
