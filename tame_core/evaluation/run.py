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
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import EvaluationError, ImageLoadError
from ..explainer import Explainer
from ..fingerprint import files_digest, tensors_digest
from ..images import find_images, image_to_tensor, load_image
from ..methods import explain_with, get_method
from ..methods.base import warm_up
from ..metrics import average_drop_increase, deletion_insertion, road
from ..metrics.road import DEFAULT_NOISE
from ..stopping import Stopped, check, stop_on
from ..splits import split_files
from ..training.distributed import Distributed
from .config import EvaluationConfig, metric_forwards
from .report import EvaluationReport
from .state import load_state, save_state

#: progress(done, total, message): units are (image, method) pairs.
Progress = Callable[[int, int, str], None]


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
    on_maps: Callable[[list[str], str, torch.Tensor, torch.Tensor], None] | None = None,
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
    methods, options, limits = list(config.methods), config.method_options, config.method_limits
    group_limits, metrics, steps = config.metric_limits, config.metrics, config.steps
    road_percentages = config.road_percentages
    files = select_files(config.data, config.split, config.list_file, config.limit)
    backbone = explainer.backbone
    settings = {
        "backbone": backbone.name,
        "head": _head_name(explainer),
        "head_tensors_sha256": tensors_digest(explainer.head.state_dict()),
        "data": config.data,
        "data_files_sha256": files_digest(files),
        "split": config.split,
        "list_file": config.list_file,
        "images": len(files),
        "geometry": "crop",
        "classes": "top-1 prediction",
        "methods": methods,
        "method_options": options,
        "method_limits": limits,
        "metric_limits": group_limits,
        "metrics": list(metrics),
        "curve_steps": steps,
        "curve_baseline": config.baseline,
        "road_percentages": list(road_percentages),
        "road_noise": DEFAULT_NOISE,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "device": str(explainer.device),
    }
    batch_size = config.batch_size
    tally = load_state(state_path, settings)
    keys = [image_key(path, config.data) for path in files]
    finished = tally.finished()
    measured = {(row["image"], row["method"]) for row in tally.rows}  # with a stopped batch's finished methods
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    mine = [position for position in range(len(files)) if position % world == rank]  # this rank's fixed shard
    todo = [position for position in mine if keys[position] not in finished]  # a resume redoes no finished image
    total = sum(_before(mine, limits.get(m)) for m in methods)
    done = total - sum(_before(todo, limits.get(m)) for m in methods)
    per_image = {m: get_method(m).expected_passes(explainer, **options[m])[0] for m in methods}
    preprocess = backbone.preprocess
    warmed: set[str] = set()
    unit = {"done": 0.0, "span": 0.0, "expected": 0, "seen": 0, "message": "", "forwards": 0}
    # rank 0's progress counts every rank's images: each rank adds its finished units to a shared count
    shared = dist.counter("evaluate-done") if world > 1 else None
    everyone = (sum(dist.gather([total])), sum(dist.gather([done]))) if shared is not None else (total, done)

    def show(local: float, message: str) -> None:
        """Progress of ``local`` units on this rank (finished ``done`` plus a part of the one in flight)."""
        if progress is None or rank != 0:
            return
        finished = everyone[1] + shared(0) if shared is not None else done
        progress(finished + (local - done), everyone[0], message)

    def on_forward(images: int) -> None:  # progress inside a (method, batch) unit, from its forwards
        unit["seen"] += images
        unit["forwards"] += images
        if unit["expected"]:
            part = min(1.0, unit["seen"] / unit["expected"])
            show(unit["done"] + part * unit["span"], unit["message"])

    outcomes: list[dict[str, Any]] = []  # the batch in progress's rows, by finished method
    kept = {"forwards": 0}
    try:
        with stop_on(backbone, stop, on_forward):
            for first in range(0, len(todo), batch_size):
                check(stop)
                batch = todo[first : first + batch_size]  # indices in ``files``
                start, paths = batch[0], [files[position] for position in batch]
                pictures, positions, unreadable = [], [], []  # readable pictures and their indices in ``files``
                for position, path in zip(batch, paths):
                    try:
                        pictures.append(image_to_tensor(load_image(path, min_short_side=preprocess.decode_short_side)))
                        positions.append(position)
                    except ImageLoadError as error:
                        unreadable.append(str(error))
                outcomes = []  # applied once every method has finished the batch; on a stop, each finished method's
                kept["forwards"] = 0  # images through the backbone up to the last finished method
                unit["forwards"] = 0  # images through the backbone for this batch's results (warm-ups left out)
                if pictures:
                    inputs = preprocess.batch(pictures, "crop", explainer.device)
                    with torch.no_grad():
                        logits = backbone(inputs).float()
                    classes = logits.argmax(dim=1)
                    for method in methods:
                        keep = _before(positions, limits.get(method))  # a limit counts files, whatever the batch size
                        if keep == 0:
                            continue
                        span = _before(batch, limits.get(method))
                        # the images this method still lacks (all, unless a stop kept its rows for this batch)
                        need = [i for i in range(keep) if (keys[positions[i]], method) not in measured]
                        if not need:
                            done += span
                            if shared is not None:
                                shared(span)
                            continue
                        rows_of = slice(0, keep) if len(need) == keep else torch.tensor(need, device=inputs.device)
                        message = f"{method} on images {start + 1}-{batch[-1] + 1} of {len(files)}"
                        counts = {g: _before([positions[i] for i in need], group_limits.get(g)) for g in metrics}
                        expected = len(need) * per_image[method] + sum(
                            n * metric_forwards([g], steps, road_percentages) for g, n in counts.items()
                        )
                        unit.update(done=done, span=span, expected=expected, seen=0, message=message)
                        show(done, message)
                        if method not in warmed:  # time the method's own work, not its first call's set-up
                            before = unit["forwards"]
                            warm_up(explainer, inputs, classes, method, **options[method])
                            warmed.add(method)
                            unit["seen"], unit["forwards"] = 0, before
                        outcomes.extend(_evaluate_method(
                            method, explainer, inputs[rows_of], classes[rows_of], logits[rows_of], options[method],
                            counts, config, [keys[positions[i]] for i in need], on_maps,
                        ))
                        kept["forwards"] = unit["forwards"]
                        done += span
                        if shared is not None:
                            shared(span)
                tally.add([keys[position] for position in batch], outcomes, unreadable, unit["forwards"])
                outcomes = []  # in the tally now: an interrupt while saving must not add them twice
                save_state(state_path, settings, tally)
    except (Stopped, KeyboardInterrupt) as interrupted:
        # the methods that finished the batch in progress keep their rows (its images are not done: a resume
        # runs only the methods they still lack); the method in flight is dropped
        if outcomes:
            tally.add([], outcomes, (), kept["forwards"])
            save_state(state_path, settings, tally)
        if isinstance(interrupted, KeyboardInterrupt):
            raise
    rows, skipped, images_done = tally.rows, tally.skipped, tally.images_done
    if world > 1:  # every rank's rows, merged (a rank stopped early contributes what it finished)
        rows, skipped, images_done = dist.gather(rows), sorted(dist.gather(skipped)), sum(dist.gather([images_done]))
    if not (stop is not None and stop.is_set()):
        show(done, "done")  # after the merge: every rank has finished
    order = {key: index for index, key in enumerate(keys)}
    rows = sorted(rows, key=lambda row: (order.get(row["image"], len(order)), methods.index(row["method"])))
    return EvaluationReport.from_rows({**settings, "images_done": images_done}, rows, methods, skipped)


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
    config: EvaluationConfig,
    images: Sequence[str],
    on_maps: Callable[[list[str], str, torch.Tensor, torch.Tensor], None] | None = None,
) -> list[dict[str, Any]]:
    """Explain and measure one batch; returns its rows, one per image (``images``: their keys), for the tally."""
    result = explain_with(explainer, inputs, classes, method, **options)
    if on_maps is not None:
        on_maps(list(images), method, inputs, result.maps)
    model, size, seed = explainer.backbone, config.metric_batch_size, config.seed
    measured = []
    for group, count in counts.items():
        if count == 0:
            continue
        x, maps, c, clean = inputs[:count], result.maps[:count], classes[:count], logits[:count]
        if group == "adic":
            values = average_drop_increase(model, x, maps, c, batch_size=size, clean_logits=clean).per_image()
        elif group == "road":
            values = {}
            for order in ("morf", "lerf"):
                values.update(road(model, x, maps, c, config.road_percentages, order, size, seed=seed, clean_logits=clean).per_image())
        else:
            values = deletion_insertion(model, x, maps, c, config.steps, config.baseline, size).per_image()
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
