"""Training a head from the app: data in (a server folder or an uploaded zip), a background run with live
losses and preview maps, stop and resume, and where the result goes.

The run itself is :func:`tame_core.training.train_head`; this module only feeds it and watches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from ..backbones import Backbone, load_backbone
from ..checkpoint import read_metadata
from ..errors import TameError
from ..explainer import Explainer
from ..heads import BUNDLED_HEADS
from ..images import IMAGE_SUFFIXES, collect_images, find_images, load_image, tensor_to_pixels
from ..maps import overlay
from ..taps import check_layers, list_layers
from ..training import RECIPES, TrainConfig, TrainingError, split_files, train_head
from ..training.trainer import default_layers_for, recipe_layers
from ..training.init import new_head
from ..training.state import load_state
from ..reading import parse_json, read_regular
from . import costs
from .jobs import Job, JobContext
from .models import LoadedModel
from .storage import check_quota, public_message
from .workspace import Workspace

#: Refuse zips that would unpack to more than this many bytes or members, or hold a member larger than
#: MAX_MEMBER_BYTES (zip bombs, wrong uploads). Every limit is checked on the sizes the zip declares before
#: anything is written, and again on the bytes actually unpacked, which are streamed to disk in chunks.
MAX_UNZIPPED_BYTES = 2 * 2**30
MAX_MEMBER_BYTES = 128 * 2**20
MAX_ZIP_MEMBERS = 50_000
#: Folders a member may sit in, and characters in a member's name: real image sets are far below both.
MAX_ZIP_DEPTH = 32
MAX_MEMBER_NAME = 1024
_CHUNK = 1 << 20

#: Largest training log read back for the loss chart.
MAX_LOG_BYTES = 256 * 2**20

#: Pictures from the training folder shown with their current maps while a head trains.
PREVIEW_IMAGES = 3
#: Steps between a page-started run's saved states: also how often its preview maps refresh.
CHECKPOINT_EVERY = 10

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def extract_zip(data: bytes | BinaryIO, folder: str | Path, name: str = "upload.zip") -> Path:
    """Unpack the images of an uploaded zip into the new folder ``folder`` and return it (resolved).

    Members are streamed to disk with size, count and path checks; a refused zip leaves nothing behind.
    """
    target = Path(folder).resolve()
    if target.exists():
        raise TrainingError(f"{name}: its folder exists already; unpack each zip into a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unzip-", dir=target.parent))
    try:
        _unpack_images(data, staging, name)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _unpack_images(data: bytes | BinaryIO, root: Path, name: str) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError):
        raise TrainingError(f"{name}: not a zip file") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise TrainingError(f"{name}: {len(members)} files is over the limit of {MAX_ZIP_MEMBERS}")
        images = [info for info in members if Path(info.filename).suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise TrainingError(f"{name}: no images inside (looked for {', '.join(IMAGE_SUFFIXES)})")
        targets: dict[Path, zipfile.ZipInfo] = {}
        for info in images:  # everything the zip declares is checked before the first byte is written
            _check_member_name(info.filename, name)
            path = (root / info.filename).resolve()
            if root not in path.parents:
                raise TrainingError(f"{name}: member {info.filename!r} would unpack outside its folder")
            if info.file_size > MAX_MEMBER_BYTES:
                raise TrainingError(f"{name}: member {info.filename!r} unpacks to {_size(info.file_size)}, over the {_size(MAX_MEMBER_BYTES)} limit per file")
            if path in targets:
                raise TrainingError(f"{name}: member {info.filename!r} appears twice")
            if Path(info.filename).name.startswith(".") or "__MACOSX" in Path(info.filename).parts:
                continue
            targets[path] = info
        _check_no_file_is_a_folder(targets, name)
        total = sum(info.file_size for info in targets.values())
        if total > MAX_UNZIPPED_BYTES:
            raise TrainingError(f"{name}: unpacks to over {_size(MAX_UNZIPPED_BYTES)}")
        check_quota(total)
        written = 0
        for path, info in targets.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(path, "xb") as sink:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if sink.tell() + len(chunk) > min(info.file_size, MAX_MEMBER_BYTES) or written > MAX_UNZIPPED_BYTES:
                            raise TrainingError(f"{name}: member {info.filename!r} unpacks to more than it declares")
                        sink.write(chunk)
            except TrainingError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError, OSError) as error:
                reason = getattr(error, "strerror", None) or " ".join(str(error).split()) or type(error).__name__
                raise TrainingError(f"{name}: member {_short(info.filename)!r} cannot be unpacked ({public_message(reason)})") from None


def _check_member_name(member: str, name: str) -> None:
    """Refuse a member name too long or too deep to unpack (no server path in the message)."""
    parts = [part for part in member.replace("\\", "/").split("/") if part]
    if len(member) > MAX_MEMBER_NAME or len(parts) > MAX_ZIP_DEPTH + 1 or any(len(part.encode()) > 255 for part in parts):
        raise TrainingError(
            f"{name}: member {_short(member)!r} is nested too deep or named too long "
            f"(limits: {MAX_ZIP_DEPTH} folders, {MAX_MEMBER_NAME} characters)"
        )


def _check_no_file_is_a_folder(targets: dict[Path, zipfile.ZipInfo], name: str) -> None:
    """``a.jpg`` and ``a.jpg/b.jpg`` cannot both be unpacked: refuse before writing anything."""
    for path, info in targets.items():
        clash = next((parent for parent in path.parents if parent in targets), None)
        if clash is not None:
            raise TrainingError(f"{name}: member {_short(info.filename)!r} lies inside member {_short(targets[clash].filename)!r}, a file")


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def unpack_upload(data: bytes | BinaryIO, name: str, key: str, folder: str | Path, keep_others: bool = False) -> Path:
    """Unpack an uploaded zip once per upload ``key`` into a session's uploads ``folder``.

    A new upload replaces the session's earlier unpacked zips (unless ``keep_others``: a running job may
    still read one), so a session holds one unpacked zip at a time.
    """
    folder = Path(folder)
    target = folder / hashlib.sha256(key.encode()).hexdigest()[:16]
    if not target.is_dir():
        if not keep_others:
            for earlier in folder.iterdir():
                if earlier.is_dir():
                    shutil.rmtree(earlier, ignore_errors=True)
        extract_zip(data, target, name)
    return target


def _size(count: int) -> str:
    return f"{count / 2**30:.0f} GB" if count >= 2**30 else f"{count / 2**20:.0f} MB"


def output_path(name: str, folder: str | Path) -> Path:
    """``<folder>/<name>.safetensors`` for a user's name (the app passes its session's folder: never the
    bundled heads' folder, which an installed package may not let us write); the bundled heads' names are
    refused."""
    stem = name.strip().removesuffix(".safetensors")
    if not _NAME.match(stem):
        raise TrainingError(f"head name {name!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    if stem in BUNDLED_HEADS.values():
        raise TrainingError(f"head name {stem!r} is the bundled head's; choose another name")
    return Path(folder) / f"{stem}.safetensors"


class TrainingPreview:
    """The head saved at the run's last checkpoint, applied to a few of its pictures.

    It reads the resumable state the trainer writes every ``checkpoint_every`` steps, so it sees the
    head as it trains without touching the run; the backbone is loaded once, on first use.
    """

    def __init__(self, config: TrainConfig, pictures: Sequence[np.ndarray]) -> None:
        self.config = config
        self.pictures = list(pictures)
        self._backbone: Backbone | None = None

    @classmethod
    def from_folder(cls, config: TrainConfig, count: int = PREVIEW_IMAGES) -> "TrainingPreview":
        pictures = []
        for path in collect_images(config.data):
            try:
                pictures.append(np.asarray(load_image(path)))
            except TameError:
                continue
            if len(pictures) == count:
                break
        return cls(config, pictures)

    def overlays(self) -> list[np.ndarray]:
        """Each picture (classifier crop) with the map of its top-1 class under the latest saved head."""
        if not self.pictures:
            return []
        if self._backbone is None:
            self._backbone = load_backbone(self.config.backbone, self.config.weights)
        self.config.settle_recipe(self._backbone.pooled_layer is not None)  # the layers the run itself taps
        layers = list(self.config.layers or recipe_layers(self._backbone, self.config))
        channels = [info.channels for info in check_layers(self._backbone, layers)]
        head = new_head(channels, self._backbone, self.config.variant, self.config.fuser)
        head.load_state_dict(load_state(self.config.state_path)["head"])
        explanation = Explainer(self._backbone, head, layers).explain(self.pictures, geometry="crop")
        crops = tensor_to_pixels(explanation.inputs)
        return [overlay(crop, explanation.maps[i, 0].cpu().numpy()) for i, crop in enumerate(crops)]


def logged_steps(log_path: Path, up_to: int) -> list[dict[str, Any]]:
    """The step records of a run's JSON-lines log up to step ``up_to``, one per step (the latest, as a
    resumed run that repeated steps after a crash logs them twice), in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        lines = read_regular(log_path, MAX_LOG_BYTES, TrainingError).decode("utf-8", errors="replace").splitlines()
    except TameError:
        return []
    for line in lines:
        try:
            record = parse_json(line, TrainingError, "log line")
        except TameError:
            continue  # a line cut short by a crash, or one edited by hand
        if isinstance(record, dict) and "loss" in record and isinstance(record.get("step"), int) and record["step"] <= up_to:
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def train_work(config: TrainConfig, context: JobContext, preview: TrainingPreview | None = None) -> Path:
    """Run :func:`train_head` as a job: records are the trainer's log records, plus preview overlays.

    Before the first step the trainer reports its phases (loading the backbone, checking the images),
    which become the progress message; a resumed run first replays the steps it already has from its
    log, so the loss chart keeps steps 1..n.
    """
    total = {"steps": 0}
    context.progress(0.0, "Starting")

    def on_phase(text: str) -> None:
        context.record({"event": "phase", "phase": text})
        context.progress(None, text[:1].upper() + text[1:])

    def on_record(record: dict[str, Any]) -> None:
        if "total_steps" in record:
            total["steps"] = int(record["total_steps"])
        if record.get("event") == "resume":
            for earlier in logged_steps(config.log_path, int(record["step"])):
                context.record(earlier)
            context.progress(record["step"] / max(1, total["steps"]), f"Resumed at step {record['step']}/{total['steps']}")
        elif record.get("event") == "start":
            context.progress(0.0, f"Training on {record.get('images', '?')} images: the first step is running")
        context.record(record)
        if "step" in record and "loss" in record and total["steps"]:
            step = record["step"]
            context.progress(step / total["steps"], f"step {step}/{total['steps']}, loss {record['loss']:.3f}")
        if record.get("event") == "checkpoint" and preview is not None:
            context.record({"event": "preview", "step": record.get("step"), "overlays": preview.overlays()})

    return train_head(config, callback=on_record, stop=context.stop_event, phase=on_phase)


def loss_history(records: Sequence[Any]) -> list[dict[str, Any]]:
    """One step record per step, in step order (a resumed run's replayed steps and its new ones together)."""
    by_step = {r["step"]: r for r in records if isinstance(r, dict) and "loss" in r and "step" in r}
    return [by_step[step] for step in sorted(by_step)]


def run_outcome(records: Sequence[Any]) -> dict[str, Any] | None:
    """The run's last ``done`` or ``stopped`` event (with its step), None while it runs."""
    return next((r for r in reversed(records) if isinstance(r, dict) and r.get("event") in ("done", "stopped")), None)


def layer_choices(backbone: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({layer: "name (channels, map size)"} for every tappable layer, {recipe: its default layers} for the
    recipes this backbone can train); random weights suffice."""
    net = load_backbone(backbone, weights="random")
    labels = {
        info.name: f"{info.name} ({info.channels} ch, {info.map_size[0]}×{info.map_size[1]})"
        for info in list_layers(net)
        if info.usable and info.map_size is not None
    }
    defaults = {}
    for recipe, values in RECIPES.items():
        with contextlib.suppress(TrainingError):
            defaults[recipe] = default_layers_for(net, values["init"] == "cam", recipe)
    return labels, defaults


def can_resume(config: TrainConfig) -> bool:
    """Whether a stopped (not finished) run of this configuration left a state to continue from."""
    if not config.state_path.is_file():
        return False
    try:
        return not read_metadata(config.out).training.get("finished", False)
    except TameError:
        return True  # a state without a readable head: the run stopped before saving one



def training_config(
    data: Path, name: str, heads: str | Path, backbone: str, layers: Sequence[str], variant: str, device: str, **values: Any
) -> TrainConfig:
    """The Train page's run: head ``name`` saved in the session's ``heads`` folder, its state saved every
    :data:`CHECKPOINT_EVERY` steps, no progress bar on stderr; ``values`` are the recipe, epochs, batch
    size, learning rate and split."""
    return TrainConfig(
        data=data,
        out=output_path(name, heads),
        backbone=backbone,
        layers=list(layers),
        variant=variant,
        device=device,
        checkpoint_every=CHECKPOINT_EVERY,
        progress=False,
        **values,
    )


def run_config(config: TrainConfig, resume: bool) -> TrainConfig:
    """``config`` as the run to start (``config`` itself unchanged): ``resume`` continues its stopped run,
    else the run starts over and replaces the head of that name (the page warns first)."""
    return dataclasses.replace(config, resume=resume, overwrite=not resume)


def start_training(ws: Workspace, config: TrainConfig, resume: bool) -> Job:
    """Train in the background (see :func:`run_config`); the job's tag is the head's path."""
    config = run_config(config, resume)
    preview = TrainingPreview.from_folder(config)
    verb = "Resuming" if resume else "Training"
    return ws.start_job("train", f"{verb} {config.out.stem}", lambda context: train_work(config, context, preview), config.out)


def resumed_steps(records: Sequence[Any]) -> list[int]:
    """The steps a run was resumed at (drawn as marks on the loss plot)."""
    return [r["step"] for r in records if isinstance(r, dict) and r.get("event") == "resume"]


def latest_preview(records: Sequence[Any]) -> dict[str, Any] | None:
    """The last preview record (``step`` and the saved head's ``overlays``), None before the first."""
    return next((r for r in reversed(records) if isinstance(r, dict) and r.get("event") == "preview"), None)


def total_steps(records: Sequence[Any]) -> int | None:
    """The run's planned number of steps, once a record has said it."""
    return next((r["total_steps"] for r in records if isinstance(r, dict) and "total_steps" in r), None)


@functools.lru_cache(maxsize=16)
def _image_count(folder: str, modified: float, split: str, limit: int | None) -> int:
    """Images a run on ``folder`` trains on; ``modified`` (the folder's mtime) keys the cache."""
    return len(split_files(find_images(folder), split)[:limit])


def training_cost(model: LoadedModel | None, config: TrainConfig) -> costs.Estimate | None:
    """The Start button's estimate: the passes of :func:`~.costs.training_passes` at the sidebar model's
    forward time. None when that model is not the backbone to train (its time is known only once the run
    starts, and the progress bar then says what is left) or the data is not one folder."""
    folder = config.data[0] if isinstance(config.data, (list, tuple)) and len(config.data) == 1 else config.data
    if model is None or model.explainer.backbone.name != config.backbone or not Path(folder).is_dir():
        return None
    images = _image_count(str(folder), Path(folder).stat().st_mtime, config.split, config.limit)
    extra = int(config.loss.destroy > 0) + int(config.loss.insert > 0)
    return costs.training_estimate(model, images, config.epochs, extra)
