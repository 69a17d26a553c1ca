"""An evaluation run: explain a folder's images with each method, measure the maps, keep per-image values.

Each image is shown to the classifier as it is evaluated (centre crop) and explained for its top-1
class by every method; each method's maps then go through AD/IC, ROAD (MoRF and LeRF) and the
deletion/insertion curves, batch by batch on the model's device. One clean forward per batch serves
all methods and metrics. Per-image values are kept, so a state file lets an interrupted run resume
where it stopped, and a method may run on only the first images (``method_limits``) when it is slow.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import EvaluationError, ImageLoadError
from ..explainer import Explainer
from ..fingerprint import files_digest, resume_tensors_digest
from ..images import find_images, image_to_tensor, load_image
from ..methods import explain_with, get_method
from ..methods.base import warm_up
from ..metrics.road import DEFAULT_NOISE
from ..stopping import Stopped, check, stop_on
from ..splits import split_files
from ..training.distributed import Distributed
from .config import EvaluationConfig
from .groups import Measuring, get_metric_group, metric_forwards
from .report import EvaluationReport
from .state import Tally, load_state, save_state

#: progress(done, total, message): units are (image, method) pairs.
Progress = Callable[[int, int, str], None]
#: on_maps(keys, method, inputs, maps): a batch's maps as they are measured.
OnMaps = Callable[[list[str], str, torch.Tensor, torch.Tensor], None]


def select_files(
    data_dir: str | os.PathLike, split: str = "all", list_file: str | os.PathLike | None = None, limit: int | None = None
) -> list[Path]:
    """The images to evaluate: every image below ``data_dir``, or those named in ``list_file`` (one path
    per line, relative to ``data_dir``), narrowed to the project's ``train``/``heldout`` split, then the
    first ``limit``."""
    if list_file is not None:
        if not Path(list_file).is_file():
            raise EvaluationError(f"image list {list_file} does not exist")
        lines = Path(list_file).read_text().splitlines()
        files = [Path(data_dir) / line.strip() for line in lines if line.strip() and not line.startswith("#")]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise EvaluationError(f"{len(missing)} files named in {list_file} do not exist (first: {missing[0]})")
    else:
        try:
            files = find_images(data_dir)
        except ImageLoadError as error:
            raise EvaluationError(str(error)) from None
    files = split_files(files, split)
    if limit is not None:
        files = files[: max(0, int(limit))]
    if not files:
        raise EvaluationError(f"no images to evaluate in {data_dir} (split {split!r})")
    return files


def evaluate(
    explainer: Explainer,
    config: EvaluationConfig,
    progress: Progress | None = None,
    *,
    state_path: str | os.PathLike | None = None,
    stop: threading.Event | None = None,
    dist: Distributed | None = None,
    on_maps: OnMaps | None = None,
) -> EvaluationReport:
    """Explain the images ``config`` names with each of its methods and measure the maps.

    With ``state_path`` the per-image results are saved after every batch and a run with the same
    settings resumes from them; ``stop`` ends the run at the next forward pass (the batch in progress is
    dropped, the report covers the images done before it). Cheap methods are warmed up once before
    their first timed batch, so their time is their own work. Under ``torchrun`` (``dist`` of several
    ranks) each rank takes the files whose index modulo the world size is its rank, keeps its own state
    file, and every rank returns the report of all ranks' rows (progress counts this rank's share).
    ``on_maps(keys, method, inputs, maps)`` sees each batch's maps as they are measured (the app keeps
    thumbnails of them): the images' keys, the model inputs (B, 3, H, W) in [0, 1] and the maps (B, H, W).

    Example:
        >>> config = EvaluationConfig(data="photos/", methods=("tame", "gradcam"), limit=20)
        >>> print(evaluate(Explainer.load(), config).table())
    """
    files = select_files(config.data, config.split, config.list_file, config.limit)
    settings = run_settings(explainer, config, files)
    run = _Run(explainer, config, files, load_state(state_path, settings), dist, on_maps)
    tracker = run.tracker(progress)
    try:
        with stop_on(explainer.backbone, stop, tracker.on_forward):
            for batch in run.batches():
                check(stop)
                run.measure(batch, tracker)
                run.save(batch, tracker, settings, state_path)
    except (Stopped, KeyboardInterrupt) as interrupted:
        run.keep_finished_methods(settings, state_path)
        if isinstance(interrupted, KeyboardInterrupt):
            raise
    return run.report(settings, tracker, stop)


def run_settings(explainer: Explainer, config: EvaluationConfig, files: Sequence[Path]) -> dict[str, Any]:
    """What a run's values depend on, saved beside its tally and in its report: a resume must match all of it
    (the same head tensors and image files included), and a report says what it measured."""
    blur = {"map_blur": explainer.map_blur} if explainer.map_blur else {}  # the maps depend on it (absent: none, as before it existed)
    return {
        "backbone": explainer.backbone.name,
        "head": _head_name(explainer),
        "head_tensors_sha256": resume_tensors_digest(explainer.head.state_dict()),
        **blur,
        "data": config.data,
        "data_files_sha256": files_digest(files),
        "split": config.split,
        "list_file": config.list_file,
        "images": len(files),
        "geometry": "crop",
        "classes": "top-1 prediction",
        "methods": list(config.methods),
        "method_options": config.method_options,
        "method_limits": config.method_limits,
        "metric_limits": config.metric_limits,
        "metrics": list(config.metrics),
        "curve_steps": config.steps,
        "curve_baseline": config.baseline,
        "road_percentages": list(config.road_percentages),
        "road_noise": DEFAULT_NOISE,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "device": str(explainer.device),
    }


@dataclass
class _Tracker:
    """Progress in (image, method) units. ``done`` counts this rank's finished units (a resume's included);
    the unit in flight (one method on one batch) adds the share of the forwards it expects that went
    through the backbone. Rank 0 reports every rank's units: each rank adds its finished ones to ``shared``."""

    report: Progress | None
    rank: int
    done: int
    everyone_total: int  # every rank's units
    everyone_done: int  # every rank's units done when the run started
    shared: Callable[[int], int] | None  # add(n) to the count every rank shares; add(0) reads it
    start: float = 0.0  # ``done`` when the unit in flight began
    span: int = 0  # the unit's share of the units
    expected: int = 0  # the forwards the unit expects
    seen: int = 0  # the forwards it has made
    message: str = ""
    forwards: int = 0  # images through the backbone for this batch's results (warm-ups left out)

    def show(self, local: float, message: str) -> None:
        """Progress of ``local`` units on this rank (finished ``done`` plus a part of the one in flight)."""
        if self.report is None or self.rank != 0:
            return
        finished = self.everyone_done + self.shared(0) if self.shared is not None else self.done
        self.report(finished + (local - self.done), self.everyone_total, message)

    def on_forward(self, images: int) -> None:
        """Progress inside a unit, from its forwards (a slow method's unit takes minutes)."""
        self.seen += images
        self.forwards += images
        if self.expected:
            part = min(1.0, self.seen / self.expected)
            self.show(self.start + part * self.span, self.message)

    def begin(self, span: int, expected: int, message: str) -> None:
        """A unit of ``span`` units starts, expecting ``expected`` forwards."""
        self.start, self.span, self.expected, self.seen, self.message = self.done, span, expected, 0, message
        self.show(self.done, message)

    def finish(self, span: int) -> None:
        """``span`` units are done (every rank's count with them)."""
        self.done += span
        if self.shared is not None:
            self.shared(span)


@dataclass
class _Batch:
    """A batch in progress: its files' positions, the readable ones, and the rows of the methods that finished
    it (applied once every method has; on a stop, each finished method's rows are kept)."""

    positions: list[int]  # indices in the run's files
    readable: list[int] = field(default_factory=list)  # the positions of the readable pictures
    unreadable: list[str] = field(default_factory=list)  # one message per unreadable image
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    kept_forwards: int = 0  # images through the backbone up to the last finished method


class _Run:
    """One evaluation's working state: the files and their keys, this rank's share of them still to do, the
    tally of what is done, the batch in progress."""

    def __init__(self, explainer: Explainer, config: EvaluationConfig, files: list[Path], tally: Tally,
                 dist: Distributed | None, on_maps: OnMaps | None) -> None:
        self.explainer, self.config, self.files, self.tally, self.dist, self.on_maps = explainer, config, files, tally, dist, on_maps
        self.methods = list(config.methods)
        self.keys = [image_key(path, config.data) for path in files]
        finished = tally.finished()
        self.measured = {(row["image"], row["method"]) for row in tally.rows}  # with a stopped batch's finished methods
        self.rank, self.world = (dist.rank, dist.world) if dist is not None else (0, 1)
        self.mine = [position for position in range(len(files)) if position % self.world == self.rank]  # this rank's fixed shard
        self.todo = [position for position in self.mine if self.keys[position] not in finished]  # a resume redoes no finished image
        options = config.method_options
        self.per_image = {m: get_method(m).expected_passes(explainer, **options[m])[0] for m in self.methods}
        self.measuring = config.measuring()
        self.warmed: set[str] = set()
        self.batch = _Batch([])

    def tracker(self, progress: Progress | None) -> _Tracker:
        """Progress over every rank's (image, method) units, a method's limit counted; resumed units are done."""
        limits = self.config.method_limits
        total = sum(_before(self.mine, limits.get(m)) for m in self.methods)
        done = total - sum(_before(self.todo, limits.get(m)) for m in self.methods)
        # rank 0's progress counts every rank's images: each rank adds its finished units to a shared count
        shared = self.dist.counter("evaluate-done") if self.world > 1 else None
        everyone = (sum(self.dist.gather([total])), sum(self.dist.gather([done]))) if shared is not None else (total, done)
        return _Tracker(progress, self.rank, done, *everyone, shared)

    def batches(self) -> list[_Batch]:
        """This rank's images still to do, ``batch_size`` at a time."""
        size = self.config.batch_size
        return [_Batch(self.todo[first : first + size]) for first in range(0, len(self.todo), size)]

    def measure(self, batch: _Batch, tracker: _Tracker) -> None:
        """Read the batch, give it one clean forward, and measure every method's maps of it: the one forward's
        logits pick the classes and serve every metric's clean scores."""
        self.batch = batch
        preprocess = self.explainer.backbone.preprocess
        pictures = []
        for position in batch.positions:
            try:
                picture = load_image(self.files[position], min_short_side=preprocess.decode_short_side)
                pictures.append(image_to_tensor(picture))
                batch.readable.append(position)
            except ImageLoadError as error:  # an unreadable image is reported, not fatal
                batch.unreadable.append(str(error))
        tracker.forwards = 0
        if not pictures:
            return
        inputs = preprocess.batch(pictures, "crop", self.explainer.device)
        with torch.no_grad():
            logits = self.explainer.backbone(inputs).float()
        classes = logits.argmax(dim=1)
        for method in self.methods:
            self._measure_method(method, batch, inputs, classes, logits, tracker)

    def _measure_method(self, method: str, batch: _Batch, inputs: torch.Tensor, classes: torch.Tensor,
                        logits: torch.Tensor, tracker: _Tracker) -> None:
        """One method on the batch's images within its limit (a limit counts files, whatever the batch size),
        but for those a stopped run kept its rows of."""
        limit = self.config.method_limits.get(method)
        keep, span = _before(batch.readable, limit), _before(batch.positions, limit)
        if keep == 0:
            return
        need = [i for i in range(keep) if (self.keys[batch.readable[i]], method) not in self.measured]
        if not need:
            tracker.finish(span)
            return
        rows_of = slice(0, keep) if len(need) == keep else torch.tensor(need, device=inputs.device)
        counts = {g: _before([batch.readable[i] for i in need], self.config.metric_limits.get(g)) for g in self.config.metrics}
        steps, percentages = self.config.steps, self.config.road_percentages
        expected = len(need) * self.per_image[method] + sum(n * metric_forwards([g], steps, percentages) for g, n in counts.items())
        tracker.begin(span, expected, f"{method} on images {batch.positions[0] + 1}-{batch.positions[-1] + 1} of {len(self.files)}")
        self._warm_up(method, inputs, classes, tracker)
        batch.outcomes.extend(_evaluate_method(
            method, self.explainer, inputs[rows_of], classes[rows_of], logits[rows_of], self.config.method_options[method],
            counts, self.measuring, [self.keys[batch.readable[i]] for i in need], self.on_maps,
        ))
        batch.kept_forwards = tracker.forwards
        tracker.finish(span)

    def _warm_up(self, method: str, inputs: torch.Tensor, classes: torch.Tensor, tracker: _Tracker) -> None:
        """Before a method's first timed batch, run it once untimed, so its time is its own work and not its
        first call's set-up; its forwards count neither in progress nor in the batch's forwards."""
        if method in self.warmed:
            return
        before = tracker.forwards
        warm_up(self.explainer, inputs, classes, method, **self.config.method_options[method])
        self.warmed.add(method)
        tracker.seen, tracker.forwards = 0, before

    def save(self, batch: _Batch, tracker: _Tracker, settings: dict[str, Any], state_path: str | os.PathLike | None) -> None:
        """Add the finished batch to the tally and save it, so a resume starts after it."""
        self.tally.add([self.keys[position] for position in batch.positions], batch.outcomes, batch.unreadable, tracker.forwards)
        batch.outcomes = []  # in the tally now: an interrupt while saving must not add them twice
        save_state(state_path, settings, self.tally)

    def keep_finished_methods(self, settings: dict[str, Any], state_path: str | os.PathLike | None) -> None:
        """On a stop, the methods that finished the batch in progress keep their rows (its images are not done:
        a resume runs only the methods they still lack); the method in flight is dropped."""
        if self.batch.outcomes:
            self.tally.add([], self.batch.outcomes, (), self.batch.kept_forwards)
            save_state(state_path, settings, self.tally)

    def report(self, settings: dict[str, Any], tracker: _Tracker, stop: threading.Event | None) -> EvaluationReport:
        """Every rank's rows (a rank stopped early gives what it finished), in file then method order."""
        tally = self.tally
        rows, skipped, images_done = tally.rows, tally.skipped, tally.images_done
        if self.world > 1:
            rows, skipped = self.dist.gather(rows), sorted(self.dist.gather(skipped))
            images_done = sum(self.dist.gather([images_done]))
        if not (stop is not None and stop.is_set()):
            tracker.show(tracker.done, "done")  # after the merge: every rank has finished
        order = {key: index for index, key in enumerate(self.keys)}
        rows = sorted(rows, key=lambda row: (order.get(row["image"], len(order)), self.methods.index(row["method"])))
        return EvaluationReport.from_rows({**settings, "images_done": images_done}, rows, self.methods, skipped)


def image_key(path: Path, data: str | os.PathLike) -> str:
    """What a per-image row is keyed by: the image's path relative to the data folder, with forward slashes."""
    try:
        return Path(path).relative_to(data).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _evaluate_method(
    method: str,
    explainer: Explainer,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    logits: torch.Tensor,
    options: Mapping[str, Any],
    counts: Mapping[str, int],
    measuring: Measuring,
    images: Sequence[str],
    on_maps: OnMaps | None = None,
) -> list[dict[str, Any]]:
    """Explain and measure one batch; returns its rows, one per image (``images``: their keys), for the tally.
    ``counts``: how many of the batch's first images each metric group measures (a group's limit)."""
    result = explain_with(explainer, inputs, classes, method, **options)
    if on_maps is not None:
        on_maps(list(images), method, inputs, result.maps)
    measured = []
    for group, count in counts.items():
        if count == 0:
            continue
        x, maps, c, clean = inputs[:count], result.maps[:count], classes[:count], logits[:count]
        values = get_metric_group(group).measure(explainer.backbone, x, maps, c, clean, measuring)
        measured.append((group, {name: value.detach().double().cpu().tolist() for name, value in values.items()}, count))
    ms = result.seconds * 1000.0 / len(images)  # the batch's time, shared by its images
    return [
        {
            "image": key, "method": method, "ms_per_image": ms,
            "forward_passes": float(result.forward_passes), "backward_passes": float(result.backward_passes),
            "values": {group: {name: column[row] for name, column in values.items()} for group, values, count in measured if row < count},
        }
        for row, key in enumerate(images)
    ]


def _before(positions: Sequence[int], limit: int | None) -> int:
    """How many of the (sorted) file positions fall within the first ``limit`` files."""
    return len(positions) if limit is None else sum(position < limit for position in positions)


def _head_name(explainer: Explainer) -> str | None:
    metadata = explainer.metadata
    return None if metadata is None else f"{metadata.backbone} {metadata.variant} head, layers {', '.join(metadata.layers)}"
