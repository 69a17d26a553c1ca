"""``train_head``: fit a TAME head to a frozen backbone on a folder of images.

The pipeline per step (see ``step.batch_loss``): clean forward (targets, tapped features) -> head maps
-> masked forward -> loss -> SGD step -> OneCycleLR step. The backbone never leaves eval mode and none
of its parameters or batch-norm statistics change; only the head trains.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ..backbones import Backbone, load_backbone
from ..card import metadata_for
from ..checkpoint import paths_for, save_head
from ..classes import imagenet_wnids, read_labels
from ..devices import autocast, autocast_dtype, processor
from ..atomic import OutputLock
from ..errors import TameError, TrainingError
from ..fingerprint import file_digest, files_digest
from ..head import TAMEHead, TiedTAMEHead
from ..splits import HELDOUT_EVERY, HELDOUT_REMAINDER, is_heldout_class
from ..stopping import check
from ..taps import LayerTaps, check_layers
from .config import AUTO, TrainConfig
from .data import (
    EpochSampler,
    ImageFiles,
    build_transform,
    readable_images,
)
from .distributed import Distributed
from .init import init_from_cam, new_head
from .progress import Callback, RunReporter
from .losses import LossTerms
from .state import check_state, load_state, rng_state, save_state, set_rng_state
from .step import batch_loss


#: Parameters without weight decay: biases, and the tied fuser's offsets and scalars.
NO_DECAY = ("bias", "offset", "bias_scale", "shift")


def parameter_groups(head: TAMEHead, weight_decay: float) -> list[dict]:
    """Weight decay on weights, none on biases (the papers' SGD setting)."""
    trainable = [(name, p) for name, p in head.named_parameters() if p.requires_grad]
    decay = [p for name, p in trainable if not name.endswith(NO_DECAY)]
    no_decay = [p for name, p in trainable if name.endswith(NO_DECAY)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(device: torch.device, amp: bool | None) -> tuple[contextlib.AbstractContextManager | None, torch.dtype | None]:
    if not (amp if amp is not None else device.type == "cuda"):
        return None, None
    if device.type != "cuda":
        raise TrainingError("--amp (mixed precision) needs a CUDA device")
    return autocast(device, True), autocast_dtype(device)


def recipe_layers(backbone: Backbone, config: TrainConfig) -> list[str]:
    """The layers a run taps when none are given: the backbone's defaults, and for a run that starts from
    the class activation map, its last two stages and the layer the classifier pools (Lite0: ``bn2``)."""
    return default_layers_for(backbone, config.init == "cam", config.recipe)


def default_layers_for(backbone: Backbone, from_cam: bool, recipe: str = "little-data") -> list[str]:
    """See :func:`recipe_layers`; a backbone whose classifier pools no layer cannot start from the CAM."""
    defaults = list(backbone.default_layers)
    if not from_cam:
        return defaults
    pooled = backbone.pooled_layer
    if pooled is None:
        fix = "use --recipe paper" if recipe == "little-data" else "leave out --init cam"
        raise TrainingError(
            f"the {recipe} recipe with --init cam starts each map from the class activation map, which needs a classifier "
            f"that global-pools one layer into a linear layer; {backbone.name} has none: {fix}"
        )
    return defaults if defaults[-1] == pooled else [layer for layer in defaults[-2:] if layer != pooled] + [pooled]


def public_recipe(config: TrainConfig) -> dict:
    """The run's settings as the card records them: what reproduces the head, and no local paths."""
    skip = ("data", "out", "state", "log", "resume", "overwrite", "progress", "workers", "device", "map_blur")  # map_blur: the card's own field
    recipe = {k: v for k, v in config.to_dict().items() if k not in skip}
    if not recipe["blur_masks"]:  # recorded only when on: a card from before the option reads the same
        del recipe["blur_masks"]
    for key in ("weights", "labels"):
        if recipe.get(key) not in (None, "pretrained", "random"):
            recipe[key] = Path(recipe[key]).name
    return recipe


def train_head(
    config: TrainConfig,
    callback: Callback | None = None,
    stop: threading.Event | None = None,
    phase: Callable[[str], None] | None = None,
    backbone: Backbone | None = None,
) -> Path:
    """Train a head as ``config`` says; returns the head checkpoint path (``config.out``).

    ``backbone`` replaces ``config.backbone``/``weights``: any classifier :func:`~tame_core.backbones.wrap_classifier`
    made (the head is then loaded with ``Explainer.load(head, backbone=...)``).

    ``callback(record)`` receives every log record (step records and events) on rank 0. Setting
    ``stop`` makes the run save its resumable state and the head so far, then return;
    ``TrainConfig(resume=True)`` continues from the saved state with the same schedule.
    ``phase(text)`` hears what the run does before its first step (loading the backbone, checking
    the images: tens of seconds on a large folder), on rank 0.
    """
    dist = Distributed.setup(config.device)
    lock = OutputLock(config.out, "--out")  # one writer per head: held from before the first check to the end
    try:
        return _Run(config, dist, callback, stop, phase, lock, backbone).train()
    finally:
        lock.release()
        dist.close()


class _Run:
    def __init__(
        self,
        config: TrainConfig,
        dist: Distributed,
        callback: Callback | None,
        stop: threading.Event | None,
        on_phase: Callable[[str], None] | None = None,
        lock: OutputLock | None = None,
        backbone: Backbone | None = None,
    ) -> None:
        self.config, self.dist, self.stop, self.lock = config, dist, stop, lock

        def phase(text: str) -> None:  # before the first step: say what takes the time, honour Stop
            check(stop)
            if on_phase is not None and dist.is_main:
                on_phase(text)

        self._on_every_rank(self._claim_outputs)  # before any slow work: a refused run fails at once
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        fell_back = self._load_backbone(backbone, phase)
        phase("checking that every image can be read")
        self._read_files()
        if fell_back:  # the card's recipe says "paper"; the progress bar says so too (stderr stays for errors)
            phase(f"{self.backbone.name}'s classifier pools no single layer: the papers' recipe")
        self._build_data()
        self._build_head(phase)
        self.step = 0
        self.seconds = 0.0  # training time over all sessions of this run
        self.images = 0  # images trained on (all ranks), likewise
        self.resumed_from: int | None = None
        self.saved_step = -1
        if config.resume:
            phase("restoring the saved state")
            self._restore()
        self.reporter = RunReporter(
            config.log_path if dist.is_main else None,
            self.total_steps,
            self.step,
            append=config.resume,
            callback=callback if dist.is_main else None,
            progress=config.progress and dist.is_main,
        )

    def _load_backbone(self, backbone: Backbone | None, phase: Callable[[str], None]) -> bool:
        """The frozen classifier (the given one, or loaded by name) and the layers to tap; True when
        ``recipe="auto"`` fell back to the papers' recipe, which the caller says once the files are read."""
        config, dist = self.config, self.dist
        phase(f"loading the backbone ({backbone.name if backbone is not None else config.backbone})")
        self.backbone: Backbone = backbone.to(dist.device) if backbone is not None else load_backbone(
            config.backbone, config.weights, dist.device,
            class_names=read_labels(config.labels) if config.labels is not None else None,
            preprocess=config.preprocess_overrides(),
        )
        if config.top_k > self.backbone.num_classes:
            raise TrainingError(f"--top-k {config.top_k}: {self.backbone.name} has only {self.backbone.num_classes} classes")
        fell_back = config.recipe == AUTO and config.settle_recipe(self.backbone.pooled_layer is not None) == "paper"
        self.layers = list(config.layers or recipe_layers(self.backbone, config))
        self.channels = [info.channels for info in check_layers(self.backbone, self.layers)]
        return fell_back

    def _read_files(self) -> None:
        """The readable images of every rank (each rank checks its share), before any slow work on them."""
        config, dist = self.config, self.dist
        files, problems = readable_images(config.data, config.split, config.limit, dist.rank, dist.world)
        check(self.stop)
        skipped = set(dist.gather(problems))
        self.files = [path for path in files if str(path) not in skipped]
        self.skipped = len(skipped)
        if not self.files:
            sources = ", ".join(map(str, config.data))
            raise TrainingError(f"--data {sources}: no readable images (split {config.split!r})")

    def _build_data(self) -> None:
        """The files' digest (each rank hashes its share), the dataset, its seeded sampler and the step count."""
        config, dist = self.config, self.dist
        mine = [(index, file_digest(path)) for index, path in enumerate(self.files) if index % dist.world == dist.rank]
        self.data_digest = files_digest(self.files, [content for _, content in sorted(dist.gather(mine))])
        preprocess = self.backbone.preprocess
        self.dataset = ImageFiles(self.files, build_transform(preprocess, config.augment), preprocess.decode_short_side)
        self.sampler = EpochSampler(self.dataset, config.seed, dist.rank, dist.world)
        self.steps_per_epoch = math.ceil(len(self.sampler.base) / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch

    def _build_head(self, phase: Callable[[str], None]) -> None:
        """A new head (started from the CAMs when asked), its optimizer, schedule, precision and target draws."""
        config, dist = self.config, self.dist
        self.head = new_head(self.channels, self.backbone, config.variant, config.fuser).to(dist.device)
        if config.init == "cam":
            phase("starting every class from its class activation map")
            init_from_cam(self.head, self.backbone, self.layers, self._first_batch())
        self.head.fuser.requires_grad_(not config.freeze_fuser)
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.head, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=self.total_steps, cycle_momentum=False
        )
        self.autocast, amp_dtype = _autocast(dist.device, config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.targets_rng = torch.Generator().manual_seed(config.seed)  # draws classes when classes_per_image < top_k
        self.excluded = self._excluded_targets()

    def _excluded_targets(self) -> torch.Tensor | None:
        """Classes no step may target (``exclude_targets="heldout"``: the project's 200 held-out classes)."""
        if self.config.exclude_targets is None:
            return None
        if self.backbone.num_classes != len(imagenet_wnids()):
            raise TrainingError("exclude_targets='heldout' needs an ImageNet-1k classifier")
        flags = [is_heldout_class(index) for index in range(self.backbone.num_classes)]
        return torch.tensor(flags, device=self.dist.device)

    # --- state --------------------------------------------------------------------------------
    def _first_batch(self) -> torch.Tensor:
        self.sampler.set_epoch(0)
        items = list(islice(iter(self.sampler), self.config.batch_size))
        return torch.stack([self.dataset[item] for item in items]).to(self.dist.device)

    def _key(self) -> dict:
        """What a resumed run must share with the saved one: the schedule, the layers, the exact image files."""
        data = {"images": len(self.files), "files_sha256": self.data_digest}
        return {**self.config.schedule_key(), "layers": self.layers, "data": data, "world": self.dist.world}

    def _on_every_rank(self, check) -> Any:
        """Run ``check`` on rank 0 only (it reads or removes files) and raise its TrainingError on every rank."""
        outcome: Any = None
        if self.dist.is_main:
            try:
                outcome = check()
            except TameError as error:
                outcome = error
        outcome = self.dist.broadcast(outcome)
        if isinstance(outcome, TameError):
            raise outcome
        return outcome

    def _claim_outputs(self) -> None:
        """A new run never silently replaces an earlier run's state, log or head: it needs --overwrite."""
        config = self.config
        if self.lock is not None:
            self.lock.acquire()  # a second run on this --out stops here, before it reads or removes anything
        if config.resume:
            return
        head, card = paths_for(config.out)
        found = [path for path in (config.state_path, config.log_path, head, card) if path.exists()]
        if found and not config.overwrite:
            names = ", ".join(path.name for path in found)
            raise TrainingError(
                f"--out {config.out}: an earlier run's files are there ({names}); add --resume to continue it, "
                "--overwrite to start over, or choose another --out"
            )
        config.state_path.unlink(missing_ok=True)  # a crash before the first checkpoint must not resume the old run

    def _restore(self) -> None:
        path = self.config.state_path
        state = self._on_every_rank(lambda: load_state(path))
        saved, here = state["key"], self._key()
        different = [name for name in here if saved.get(name) != here[name]]
        if different:
            details = "; ".join(_difference(name, saved.get(name), here[name]) for name in different[:3])
            raise TrainingError(f"--resume: {path} is from a different run ({details})")
        check_state(state, self.head, self.optimizer, path)
        try:
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            self.targets_rng.set_state(state["targets_rng"])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
            reason = " ".join(str(error).split())[:160]
            raise TrainingError(f"--resume: {path} cannot be restored ({type(error).__name__}: {reason})") from None
        self.step, self.seconds, self.images = int(state["step"]), float(state["seconds"]), int(state["images"])
        self.resumed_from = self.step
        self.saved_step = self.step

    def _save_state(self) -> None:
        self.saved_step = self.step
        if self.dist.is_main:
            save_state(self.config.state_path, {
                "key": self._key(),
                "step": self.step,
                "seconds": self.seconds,
                "images": self.images,
                "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "targets_rng": self.targets_rng.get_state(),
            })
            self.reporter.event("checkpoint", step=self.step, path=str(self.config.state_path))

    def _save_head(self) -> None:
        if not self.dist.is_main:
            return
        config = self.config
        finished = self.step >= self.total_steps
        training = {
            "recipe": public_recipe(config),
            "steps": self.step,
            "total_steps": self.total_steps,
            "finished": finished,
            "seconds": round(self.seconds, 1),
            "images_per_second": round(self.images / max(self.seconds, 1e-9), 2),
            "device": str(self.dist.device),
            "world_size": self.dist.world,
            # CPU float sums are split across threads: the same run at another thread count differs in the
            # last bits, so bit-for-bit reproduction needs this count (see scripts/check_bundled_head.py)
            "cpu_threads": torch.get_num_threads(),
            "processor": processor(self.dist.device),  # the same run on another kind of chip differs too
            "torch": torch.__version__,
        }
        data = {
            "folders": [source.name for source in config.data],
            "images": len(self.files),
            "files_sha256": self.data_digest,
            "skipped_unreadable": self.skipped,
            "split": config.split,
            "split_rule": f"ImageNet class index i (sorted WordNet ids) held out when i % {HELDOUT_EVERY} == {HELDOUT_REMAINDER}"
            if config.split != "all" else None,
            "limit": config.limit,
            "seed": config.seed,
            "excluded_targets": config.exclude_targets,
        }
        head = self.head.materialize() if isinstance(self.head, TiedTAMEHead) else self.head
        metadata = metadata_for(head.eval(), self.backbone, self.layers, training=training, data=data, map_blur=config.map_blur)
        save_head(head, metadata, config.out)
        self.head.train()

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> Path:
        config, dist = self.config, self.dist
        model = dist.wrap(self.head)
        self.head.train()
        taps = LayerTaps(self.backbone, self.layers)
        workers = config.workers if config.workers is not None else (4 if dist.device.type == "cuda" else 0)
        if self.resumed_from is not None:
            self.reporter.event("resume", step=self.step, total_steps=self.total_steps)
        else:
            self.reporter.event("start", total_steps=self.total_steps, images=len(self.files), world_size=dist.world)
        epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
        stopped = False
        try:
            while self.step < self.total_steps and not stopped:
                self.sampler.set_epoch(epoch, skip=done_in_epoch * config.batch_size)
                done_in_epoch = 0
                loader = DataLoader(
                    self.dataset, batch_size=config.batch_size, sampler=self.sampler, num_workers=workers,
                    pin_memory=dist.device.type == "cuda",
                )
                for images in loader:
                    stopped = self._train_step(model, taps, images, epoch)
                    if stopped:
                        break
                epoch += 1
            if self.saved_step != self.step:
                self._save_state()
            self._save_head()
            self.reporter.event("stopped" if stopped else "done", step=self.step, path=str(config.out))
            if stopped:
                self.reporter.note(f"stopped at step {self.step}/{self.total_steps}; continue with --resume")
        finally:
            self.reporter.close()
        dist.barrier()
        return config.out

    def _check_finite(self, loss: float) -> None:
        _finite_or_stop(self, loss)

    def _train_step(self, model: torch.nn.Module, taps: LayerTaps, images: torch.Tensor, epoch: int) -> bool:
        """One optimisation step; True when the run must stop (the state is then saved)."""
        config, dist = self.config, self.dist
        started = time.perf_counter()
        inputs = images.to(dist.device, non_blocking=True)
        terms = batch_loss(
            self.backbone, taps, model, inputs, config.loss, config.mask_order, config.top_k, self.autocast,
            config.classes_per_image, self.targets_rng, self.excluded, config.map_blur if config.blur_masks else 0.0,
        )
        if terms is None:  # every image targeted an excluded class: an empty step keeps the schedule (and DDP) in step
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            nil = zero.detach()
            terms = LossTerms(zero, nil, nil, nil, nil if config.loss.destroy else None, nil if config.loss.insert else None)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        logged = terms.logged()  # the same names on every rank: the terms that are on
        values = dist.mean(torch.stack(list(logged.values())).detach().float()).tolist()
        self._check_finite(values[0])
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        self.images += inputs.shape[0] * dist.world
        record = {"step": self.step, "epoch": epoch, **dict(zip(logged, values)),
                  "lr": lr, "images": inputs.shape[0] * dist.world, "seconds": round(elapsed, 4)}
        self.reporter.step(record)
        stopping = dist.any(self.stop is not None and self.stop.is_set())
        if stopping or self.step % config.checkpoint_every == 0:
            self._save_state()
        return stopping


def _finite_or_stop(run: "_Run", loss: float) -> None:
    """Stop the run in one line on a NaN or infinite loss: nothing more is saved, so the last state and head
    on disk are the last good ones."""
    if math.isfinite(loss):
        return
    kept = f"the state saved at step {run.saved_step} is kept" if run.saved_step > 0 else "no head or state was saved"
    raise TrainingError(
        f"step {run.step}: the loss is {loss} (the head diverged; try a lower --lr than {run.config.lr:g}); {kept}"
    )


def _difference(name: str, saved: Any, now: Any) -> str:
    if name == "data" and isinstance(saved, dict) and isinstance(now, dict):
        return (
            f"data: other image files (saved: {saved.get('images')} files, digest {str(saved.get('files_sha256'))[:12]}; "
            f"now: {now['images']} files, digest {now['files_sha256'][:12]})"
        )
    return f"{name}: saved {saved!r}, now {now!r}"
