"""Training a head from the app: data in (a server folder or an uploaded zip), a background run with live
losses and preview maps, stop and resume, and where the result goes.

The run itself is :func:`tame_core.training.train_head`; this module only feeds it and watches it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backbones import Backbone, load_backbone
from ..checkpoint import read_metadata
from ..errors import TameError
from ..explainer import BUNDLED_HEADS, CHECKPOINT_DIR, Explainer
from ..head import TAMEHead
from ..images import IMAGE_SUFFIXES, find_images, load_image
from ..maps import overlay
from ..taps import check_layers, list_layers
from ..training import TrainConfig, TrainingError, train_head
from ..training.state import load_state
from .jobs import JobContext

#: Refuse zips that would unpack to more than this many bytes or members (zip bombs, wrong uploads).
MAX_UNZIPPED_BYTES = 4 * 2**30
MAX_ZIP_MEMBERS = 50_000

#: Pictures from the training folder shown with their current maps while a head trains.
PREVIEW_IMAGES = 3

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def extract_zip(data: bytes, folder: str | Path, name: str = "upload.zip") -> Path:
    """Unpack an uploaded zip of images into ``folder`` (safely) and return it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise TrainingError(f"{name}: not a zip file") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise TrainingError(f"{name}: {len(members)} files is over the limit of {MAX_ZIP_MEMBERS}")
        if sum(info.file_size for info in members) > MAX_UNZIPPED_BYTES:
            raise TrainingError(f"{name}: unpacks to over {MAX_UNZIPPED_BYTES / 2**30:.0f} GB")
        root = Path(folder).resolve()
        images = [info for info in members if Path(info.filename).suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise TrainingError(f"{name}: no images inside (looked for {', '.join(IMAGE_SUFFIXES)})")
        for info in images:
            target = (root / info.filename).resolve()
            if root not in target.parents:
                raise TrainingError(f"{name}: member {info.filename!r} would unpack outside its folder")
            if Path(info.filename).name.startswith(".") or "__MACOSX" in Path(info.filename).parts:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
    return root


def output_path(name: str, folder: str | Path | None = None) -> Path:
    """``checkpoints/<name>.safetensors`` for a user's name; the bundled heads' names are refused."""
    stem = name.strip().removesuffix(".safetensors")
    if not _NAME.match(stem):
        raise TrainingError(f"head name {name!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    if stem in BUNDLED_HEADS.values():
        raise TrainingError(f"head name {stem!r} is the bundled head's; choose another name")
    return Path(folder if folder is not None else CHECKPOINT_DIR) / f"{stem}.safetensors"


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
        for path in find_images(config.data):
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
        layers = list(self.config.layers or self._backbone.default_layers)
        channels = [info.channels for info in check_layers(self._backbone, layers)]
        head = TAMEHead(channels, self._backbone.num_classes, self.config.variant)
        head.load_state_dict(load_state(self.config.state_path)["head"])
        explanation = Explainer(self._backbone, head, layers).explain(self.pictures, geometry="crop")
        crops = (explanation.inputs.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()
        return [overlay(crop, explanation.maps[i, 0].cpu().numpy()) for i, crop in enumerate(crops)]


def logged_steps(log_path: Path, up_to: int) -> list[dict[str, Any]]:
    """The step records of a run's JSON-lines log up to step ``up_to``, one per step (the latest, as a
    resumed run that repeated steps after a crash logs them twice), in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        lines = Path(log_path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
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


def layer_choices(backbone: str) -> tuple[dict[str, str], list[str]]:
    """({layer: "name (channels, map size)"} for every tappable layer, the default layers); random weights suffice."""
    net = load_backbone(backbone, weights="random")
    labels = {
        info.name: f"{info.name} ({info.channels} ch, {info.map_size[0]}×{info.map_size[1]})"
        for info in list_layers(net)
        if info.usable and info.map_size is not None
    }
    return labels, list(net.default_layers)


def can_resume(config: TrainConfig) -> bool:
    """Whether a stopped (not finished) run of this configuration left a state to continue from."""
    if not config.state_path.is_file():
        return False
    try:
        return not read_metadata(config.out).training.get("finished", False)
    except TameError:
        return True  # a state without a readable head: the run stopped before saving one

