"""Compare: TAME and the comparison methods on one picture, each map with what it cost.

The work runs as a background job (:mod:`.jobs`): each method's map is a :class:`MethodMap` record as
soon as it is computed. Every backbone run holds the model (:meth:`LoadedModel.busy`) and checks the
job's stop flag in every forward (:meth:`JobContext.watching`), so Stop takes effect within a network
block. Finished maps go into the session's :class:`~.result_cache.ResultCache`, shared with the curves.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..methods import get_method
from ..methods.base import MethodResult, explain_with, is_cheap, timed_repeats, warm_up
from . import costs
from .jobs import JobContext
from .result_cache import ResultCache, Subject, map_key

#: The method every cost is compared with.
REFERENCE = "tame"
#: Rounds of a cheap method against TAME (:func:`timed_in_turns`), and TAME runs on each side of an expensive one.
ROUNDS = 5
AROUND = 2


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


def watching(context: JobContext | None, model: torch.nn.Module, on_forward: Callable[[int], None] | None = None):
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
    key = map_key(subject, method)
    found = cache.get(key) if cache is not None else None
    if found is not None:
        return found
    model, explanation = subject.model, subject.explanation
    with model.busy() as explainer, watching(context, explainer.backbone, on_forward):
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
    explainer: Any, inputs: torch.Tensor, classes: torch.Tensor, method: str, rounds: int = ROUNDS, min_seconds: float = 0.25
) -> tuple[MethodResult, float]:
    """``method``'s result and its time relative to TAME's, the two run in turns so that a busy machine slows
    both alike: a cheap method alternates with TAME for ``rounds`` rounds (more, up to 20, until
    ``min_seconds`` passed) and the ratio is the median of the rounds' ratios; an expensive one runs once,
    between two TAME runs on each side. ``seconds`` is the method's median run."""

    def reference() -> float:
        return explain_with(explainer, inputs, classes, REFERENCE).seconds

    warm_up(explainer, inputs, classes, REFERENCE)
    if not is_cheap(method, explainer):
        before = [reference() for _ in range(AROUND)]
        result = explain_with(explainer, inputs, classes, method)
        around = before + [reference() for _ in range(AROUND)]
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
    todo = [m for m in methods if cache is None or cache.get(map_key(subject, m)) is None]
    expected = {m: timing_forwards(m, explainer) for m in todo}
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


def timing_runs(method: str, explainer: Any) -> tuple[int, int]:
    """(runs of ``method``, runs of TAME) that timing it makes (:func:`method_map`): a warm-up and at
    least :data:`ROUNDS` runs of a cheap method, each beside a TAME run; one run of an expensive one,
    between :data:`AROUND` TAME runs on each side. TAME itself: a warm-up and ROUNDS runs."""
    if method == REFERENCE:
        return 1 + ROUNDS, 0
    if is_cheap(method, explainer):
        return 1 + ROUNDS, 1 + ROUNDS
    return 1, 1 + 2 * AROUND


def timing_forwards(method: str, explainer: Any) -> int:
    """Forwards through the backbone that computing and timing ``method`` makes (:func:`timing_runs`)."""
    runs, references = timing_runs(method, explainer)
    return runs * get_method(method).expected_passes(explainer)[0] + references * get_method(REFERENCE).expected_passes(explainer)[0]


def compare_estimate(subject: Subject, methods: Sequence[str], cache: ResultCache | None = None) -> costs.Estimate:
    """What computing and timing the maps not yet in ``cache`` will cost: every run the timing makes."""
    total = costs.Estimate(0)
    for method in methods:
        if cache is None or cache.get(map_key(subject, method)) is None:
            runs, references = timing_runs(method, subject.model.explainer)
            total = total + costs.method_estimate(subject.model, method, subject.input_hw, runs=runs)
            total = total + costs.method_estimate(subject.model, REFERENCE, subject.input_hw, runs=references)
    return total


def maps_so_far(
    subject: Subject, methods: Sequence[str], cache: ResultCache | None, live: Sequence[Any] = ()
) -> list[MethodMap]:
    """The maps ready to show, in ``methods`` order: cached ones and those a running job has recorded."""
    recorded = {r.method: r for r in live if isinstance(r, MethodMap)}
    found = []
    for method in methods:
        result = (cache.get(map_key(subject, method)) if cache is not None else None) or recorded.get(method)
        if result is not None:
            found.append(result)
    return found


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
