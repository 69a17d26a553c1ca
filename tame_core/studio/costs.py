"""What work costs, said before it starts and measured honestly after.

Before: an :class:`Estimate` is the passes a piece of work will make (each method states its own,
:meth:`~tame_core.methods.Method.expected_passes`; curves and metrics are counted here) times this
machine's measured forward time (:func:`forward_seconds`, warm, once per model; on the CPU its CPU
time scaled by the neighbours competing for the cores, :func:`cpu_contention`). After: a method's
time is its own work, timed warm (:func:`~tame_core.methods.base.timed_repeats`); a figure too short
or too scattered to mean anything is called noisy (:func:`timing_note`) instead of being printed.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence

import torch

from ..methods import get_method
from ..methods.base import synchronize
from ..evaluation import METRIC_GROUPS, metric_forwards, metric_imputations
from ..metrics.base import DEFAULT_ROAD_PERCENTAGES
from ..metrics.imputation import noisy_linear_impute
from ..metrics.road import removal_keep_masks
from .models import LoadedModel

#: A backward pass costs about this many forwards (the usual rule of thumb for CNNs).
BACKWARD_COST = 2.0
#: One timed run shorter than this says more about the machine than about the method.
SHORTEST_SINGLE_RUN_S = 0.1
#: Repeated runs whose interquartile range exceeds this fraction of their median are too scattered.
NOISY_SPREAD = 0.5

#: A measured forward time older than this is measured again, in the background: a neighbour that starts
#: hogging the machine after the server did shows in the estimates within about this long.
FORWARD_MAX_AGE_S = 30.0

_MEASURED: dict[Hashable, tuple[float, float]] = {}  # (what, model key, input size[, batch]) -> (seconds, when measured)
_MEASURING = threading.Lock()
_REFRESHING: set[Hashable] = set()
#: One measurement at a time. A page asks for several figures at once (a forward time per input size, the
#: imputation time); refreshed side by side they slowed each other down, and on a busy machine one
#: figure came out twice too high while another, measured alone, came out low.
_SAMPLING = threading.Lock()


#: How long a figure is sampled on first use (the caller waits) and when refreshed in the background (no
#: one waits). On a busy 2-core machine the scheduler gives a thread a whole core for a while, then half
#: of one: samples of 0.3 s came out anywhere from 1.1 to 2.3 times the quiet figure, while work that
#: runs for minutes meets the average, so a refresh samples for longer.
FIRST_SAMPLE_S = 0.3
REFRESH_SAMPLE_S = 2.0


@dataclass(frozen=True)
class Sample:
    """A sampled cost: ``cost`` seconds per unit of work (the CPU time on a CPU, the wall time on an
    accelerator) and, on a CPU, the :func:`cpu_contention` seen while sampling (None elsewhere)."""

    cost: float
    contention: float | None = None


#: Per figure, the least CPU time a sample ever found: the work's own cost. Beside busy neighbours the CPU
#: time of the same forward came out up to 1.4 times higher than alone (caches refilled after every switch,
#: more or less depending on where the scheduler put the threads), and times the contention that counted
#: the neighbours twice; work of minutes then took anywhere from 1.1 to 1.8 times its quiet time.
_LEAST_CPU: dict[Hashable, float] = {}


def _figure(key: Hashable, sample: Sample) -> float:
    """Seconds per unit of work that ``sample`` says sustained work will take (call with ``_MEASURING`` held)."""
    if sample.contention is None:
        return sample.cost
    _LEAST_CPU[key] = least = min(_LEAST_CPU.get(key, sample.cost), sample.cost)
    return least * sample.contention


def _sampled(measure: Callable[[float], Sample], budget: float) -> Sample:
    with _SAMPLING:
        return measure(budget)


def _timed(key: Hashable, measure: Callable[[float], Sample]) -> float:
    """``measure(seconds to sample)``'s figure for ``key``: measured on first use (then the caller waits),
    and again, for longer, in the background once :data:`FORWARD_MAX_AGE_S` old (the caller gets the
    last figure at once)."""
    with _MEASURING:
        if key not in _MEASURED:
            _MEASURED[key] = (_figure(key, _sampled(measure, FIRST_SAMPLE_S)), time.monotonic())
        seconds, when = _MEASURED[key]
        stale = time.monotonic() - when > FORWARD_MAX_AGE_S and key not in _REFRESHING
        if stale:
            _REFRESHING.add(key)
    if stale:
        threading.Thread(target=_refresh, args=(key, measure), name="tame-cost-timing", daemon=True).start()
    return seconds


def _refresh(key: Hashable, measure: Callable[[float], Sample]) -> None:
    try:
        measured = _sampled(measure, REFRESH_SAMPLE_S)
        with _MEASURING:
            _MEASURED[key] = (_figure(key, measured), time.monotonic())
    finally:
        with _MEASURING:
            _REFRESHING.discard(key)


def _size(model: LoadedModel, input_hw: Sequence[int] | None) -> tuple[int, int]:
    height, width = input_hw or model.explainer.backbone.preprocess.input_size
    return int(height), int(width)


#: Images per forward of the figure that work of no stated batch is costed with.
FIGURE_BATCH = 8


def forward_seconds(model: LoadedModel, input_hw: Sequence[int] | None = None, batch: int = FIGURE_BATCH) -> float:
    """Seconds per image of one backbone forward at ``input_hw`` (default: the model's input size):
    warmed up, then the mean over batches of ``batch`` run for the sampling time (at least three; see
    :data:`REFRESH_SAMPLE_S`). Measured at each size the work runs at, because time is not proportional
    to pixels (convolutions are faster on some widths than others)."""
    size = _size(model, input_hw)
    return _timed(("forward", model.key, size, batch), lambda budget: _measure(model, batch, size, budget))


def _measure(model: LoadedModel, batch: int, size: tuple[int, int], budget: float) -> Sample:
    """Per image, the mean over batches, each under the model's lock (never beside another user's pass,
    and a long refresh lets their passes in between its batches)."""
    with model.busy() as explainer, torch.no_grad():
        images = torch.rand(batch, 3, *size, device=explainer.device)
        explainer.backbone(images[:1])
        device = explainer.device

    def one_batch() -> None:
        with model.busy() as explainer, torch.no_grad():
            explainer.backbone(images)

    return _per(_mean_seconds(one_batch, device, budget), batch)


def _per(sample: Sample, units: int) -> Sample:
    return Sample(sample.cost / units, sample.contention)


def imputation_seconds(model: LoadedModel) -> float:
    """Seconds of one ROAD imputation of a picture at the model's input size, on its device: the mean
    over ROAD's levels of a smooth picture with a smooth map's most relevant pixels removed. Each one
    costs about a forward and a half of EfficientNet-Lite0 on a CPU; photos with their TAME maps took
    the same time within 10 %."""
    size = _size(model, None)
    return _timed(("imputation", model.key, size), lambda budget: _measure_imputation(model.explainer.device, size, budget))


def _measure_imputation(device: torch.device | str, size: tuple[int, int], budget: float = 0.0) -> Sample:
    rows, columns = torch.meshgrid(torch.linspace(0, 1, size[0]), torch.linspace(0, 1, size[1]), indexing="ij")
    picture = torch.stack([0.5 + 0.3 * torch.sin(3 * columns + 2 * rows), 0.4 + 0.3 * rows, 0.6 - 0.3 * columns])
    blob = torch.exp(-((columns - 0.55) ** 2 + (rows - 0.45) ** 2) / 0.05)
    keep = removal_keep_masks(blob[None].to(device), DEFAULT_ROAD_PERCENTAGES, "morf").flatten(0, 1)
    pictures = picture.to(device)[None].expand(len(keep), -1, -1, -1)
    return _per(_mean_seconds(lambda: noisy_linear_impute(pictures, keep), torch.device(device), budget, least_runs=1), len(keep))


# --- what a busy CPU does to sustained work ---------------------------------------------------------
def runnable_threads() -> int | None:
    """Threads running or ready to run on this machine right now, the caller included (the kernel's
    count in ``/proc/loadavg``); None where there is no such file."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_contention(runnable: float, threads: int, cores: int) -> float:
    """How many times longer sustained CPU work of ``threads`` threads takes than on a quiet machine,
    when ``runnable`` threads (the caller one of them) compete for ``cores``: the scheduler shares the
    cores fairly, so each thread gets ``cores / (others + threads)`` of one, at most a whole one.
    Measured on 2 cores with two neighbours burning a core each and one thread of ours, where this says
    1.5: the same work took 1.1 to 1.8 times its quiet time from run to run (1.4-1.6 for most)."""
    if threads < 1 or cores < 1:
        raise ValueError(f"threads and cores must be at least 1, got {threads} and {cores}")
    others = max(0.0, float(runnable) - 1.0)
    return max(1.0, (others + threads) / cores)


def _mean_seconds(run: Callable[[], object], device: torch.device, budget: float, least_runs: int = 3) -> Sample:
    """What a call of ``run`` costs, called until ``budget`` seconds and ``least_runs`` calls have passed.

    On an accelerator: the mean wall time. On the CPU: the mean CPU time of the calling thread (what the
    work costs) and :func:`cpu_contention` for the threads seen runnable between calls; the figure is
    their product (:func:`_figure`). Wall time sampled for seconds does not say what work of minutes
    will meet: on a busy 2-core machine the scheduler favoured the sampling thread, which had just woken,
    and samples of 2 s came out 1.06 or 2.2 times the quiet figure while sustained work took 1.5 times it.
    """
    on_cpu = device.type == "cpu"
    wall = cpu = 0.0
    calls, seen = 0, []
    while calls < least_runs or wall < budget:
        synchronize(device)
        start, start_cpu = time.perf_counter(), time.thread_time()
        run()
        synchronize(device)
        wall += time.perf_counter() - start
        cpu += time.thread_time() - start_cpu
        calls += 1
        if on_cpu and (runnable := runnable_threads()) is not None:
            seen.append(runnable)
    if not on_cpu or not seen:
        return Sample(wall / calls)
    return Sample(cpu / calls, cpu_contention(statistics.fmean(seen), torch.get_num_threads(), os.cpu_count() or 1))


@dataclass(frozen=True)
class Estimate:
    """Passes some work will make and the time they take on this machine."""

    forwards: int
    backwards: int = 0
    seconds: float = 0.0
    imputations: int = 0  # ROAD's imputed pictures

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(
            self.forwards + other.forwards, self.backwards + other.backwards, self.seconds + other.seconds,
            self.imputations + other.imputations,
        )

    @property
    def duration(self) -> str:
        """``≈ 9 min``."""
        return duration_text(self.seconds)

    def text(self) -> str:
        """``≈ 9 min (1,281 forward passes)``."""
        passes = f"{self.forwards:,} forward pass{'es' if self.forwards != 1 else ''}"
        if self.backwards:
            passes += f" + {self.backwards:,} backward"
        if self.imputations:
            passes += f" + {self.imputations:,} imputed pictures"
        return f"{duration_text(self.seconds)} ({passes})"


def duration_text(seconds: float) -> str:
    """A duration as people say it: ``under a second``, ``≈ 12 s``, ``≈ 4 min``, ``≈ 1.5 h``."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"≈ {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"≈ {seconds / 60:.0f} min"
    return f"≈ {seconds / 3600:.1f} h"


def passes_estimate(
    model: LoadedModel, forwards: float, backwards: float = 0.0, input_hw: Sequence[int] | None = None,
    batch: int | None = None,
) -> Estimate:
    """``forwards`` and ``backwards`` image passes at ``input_hw`` (default: the model's input size), made
    ``batch`` images at a time (default :data:`FIGURE_BATCH`), in time."""
    seconds = forward_seconds(model, input_hw, batch or FIGURE_BATCH) * (forwards + BACKWARD_COST * backwards)
    return Estimate(round(forwards), round(backwards), seconds)


def method_estimate(
    model: LoadedModel, method: str, input_hw: Sequence[int] | None = None, images: int = 1, runs: int = 1, **options: object
) -> Estimate:
    """What ``method``'s map of ``images`` pictures of ``input_hw`` will cost (its stated passes), ``runs`` times."""
    chosen = get_method(method)
    forwards, backwards = chosen.expected_passes(model.explainer, **options)
    batch = chosen.forward_batch(model.explainer, **options)
    return passes_estimate(model, forwards * images * runs, backwards * images * runs, input_hw, batch)


def curve_forwards(steps: int, modes: int = 2) -> int:
    """Forwards of one image's deletion and insertion curves: ``steps + 1`` points each."""
    return modes * (int(steps) + 1)


def evaluation_estimate(
    model: LoadedModel,
    methods: Sequence[str],
    images: int,
    steps: int,
    method_limits: Mapping[str, int] | None = None,
    groups: Sequence[str] = METRIC_GROUPS,
) -> Estimate:
    """An evaluation of ``images`` centre-cropped pictures: a clean forward each, then per method its
    passes, the metrics' forwards and ROAD's imputations, on the images that method runs on."""
    total = passes_estimate(model, images)
    imputations = metric_imputations(groups)
    for method in methods:
        count = min(images, (method_limits or {}).get(method, images))
        forwards, backwards = get_method(method).expected_passes(model.explainer)
        total = total + passes_estimate(model, count * (forwards + metric_forwards(groups, steps)), count * backwards)
        if imputations:
            total = total + Estimate(0, 0, count * imputations * imputation_seconds(model), count * imputations)
    return total


# --- after: was the timing meaningful? --------------------------------------------------------------
def timing_note(seconds: float, repeats: Sequence[float] = ()) -> str | None:
    """Why a timing is not worth printing (None when it is): one tiny run, or runs scattered too widely."""
    runs = list(repeats) or [seconds]
    if len(runs) < 3:
        return "too short to time from one run" if seconds < SHORTEST_SINGLE_RUN_S else None
    low, _, high = statistics.quantiles(runs, n=4)
    middle = statistics.median(runs)
    if middle > 0 and (high - low) / middle > NOISY_SPREAD:
        return "noisy: the machine was busy while it was timed"
    return None


def with_relative_times(rows: Sequence[dict], reference: str = "tame") -> list[dict]:
    """Table rows (``method``, ``ms_per_image``, ``images``) with ``× TAME time`` added; a time too short
    to mean anything (under :data:`SHORTEST_SINGLE_RUN_S` in all) becomes None, with the reason in ``timing``."""
    out = []
    for row in rows:
        ms, images = row.get("ms_per_image"), row.get("images") or 0
        note = timing_note(ms * images / 1000.0) if ms is not None else None
        out.append({**row, "ms_per_image": None if note else ms, "timing": note or "warm, summed over the images"})
    base = next((r["ms_per_image"] for r in out if r["method"] == reference and r["ms_per_image"]), None)
    for row in out:
        row["× TAME time"] = row["ms_per_image"] / base if base and row["ms_per_image"] is not None else None
    return out


def training_passes(images: int, epochs: int, extra_terms: int = 0) -> tuple[int, int]:
    """(forwards, backwards) of training on ``images`` for ``epochs``: per image a clean forward (targets
    and features), the masked forward and its backward through the frozen backbone to the map, and one
    forward and backward more for each of the destroying/insertion terms that is on."""
    seen = int(images) * int(epochs)
    return seen * (2 + extra_terms), seen * (1 + extra_terms)


def training_estimate(model: LoadedModel, images: int, epochs: int, extra_terms: int = 0) -> Estimate:
    """What training a head on ``model``'s backbone will cost (the live rate takes over once it runs)."""
    forwards, backwards = training_passes(images, epochs, extra_terms)
    return passes_estimate(model, forwards, backwards)
