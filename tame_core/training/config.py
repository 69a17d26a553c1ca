"""Everything a training run depends on, in one dataclass that the CLI, the app and the card share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..checkpoint import paths_for
from ..errors import TrainingError
from ..head import FUSERS, VARIANTS
from .data import AUGMENTATIONS, SPLITS
from .init import INITS
from .losses import LossWeights
from .step import MASK_ORDERS


@dataclass
class TrainConfig:
    """A head training run. The defaults are the papers' recipe (TAME, T-TAME).

    ``out`` is the head checkpoint (``.safetensors`` + ``.json`` card); the resumable state and the
    JSON-lines log go beside it unless ``state`` / ``log`` say otherwise. A run whose outputs already
    exist is refused unless it continues them (``resume``) or replaces them (``overwrite``).
    """

    data: list[Path]  # folders and/or .txt lists of image files (one path or several)
    out: Path
    backbone: str = "efficientnet_lite0"
    weights: str = "pretrained"  # backbone weights: "pretrained", "random" or a file
    layers: Sequence[str] | None = None  # None: the backbone's default layers
    variant: str = "tame"
    fuser: str = "class"  # "tied": class rows = classifier rows x a shared projection (every image trains every class)
    split: str = "all"  # "train"/"heldout": the project's ImageNet split of the folder
    limit: int | None = None  # use only the first N images (sorted paths) of the split
    epochs: int = 8
    batch_size: int = 32  # per process; DDP's global batch is this times the world size
    lr: float = 1e-3  # OneCycleLR's max learning rate
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # on weights; none on biases
    seed: int = 0
    augment: str = "standard"
    init: str = "random"  # "cam": every class starts from its class activation map
    freeze_fuser: bool = False  # train only the branches: what is learned then applies to every class
    exclude_targets: str | None = None  # "heldout": never train a map whose target is a held-out ImageNet class
    top_k: int = 1  # train each image's maps for its top-k predicted classes...
    classes_per_image: int | None = None  # ...or for this many of them per step, drawn at random (None: all k)
    mask_order: str = "raw"  # "normalized": T-TAME's order for ViTs
    loss: LossWeights = field(default_factory=LossWeights)
    device: str = "auto"
    amp: bool | None = None  # mixed precision; None: on for CUDA
    workers: int | None = None  # data-loading processes; None: 0 on the CPU, 4 on a GPU
    checkpoint_every: int = 50  # save the resumable state every N steps (and at the end)
    resume: bool = False
    overwrite: bool = False  # start afresh where an earlier run left its state, log or head (else refused)
    state: Path | None = None
    log: Path | None = None
    progress: bool = True  # tqdm bar on stderr (rank 0)

    def __post_init__(self) -> None:
        sources = [self.data] if isinstance(self.data, (str, Path)) else list(self.data)
        self.data, self.out = [Path(source) for source in sources], Path(self.out)
        self.out = paths_for(self.out)[0]  # x, x.safetensors or x.json: the tensor file
        if isinstance(self.loss, dict):
            self.loss = LossWeights(**self.loss)
        if self.layers is not None:
            self.layers = list(self.layers)
        self.validate()

    @property
    def state_path(self) -> Path:
        return Path(self.state) if self.state else self.out.with_suffix(".state.pt")

    @property
    def log_path(self) -> Path:
        return Path(self.log) if self.log else self.out.with_suffix(".log.jsonl")

    def validate(self) -> None:
        choices = {
            "variant": VARIANTS,
            "fuser": FUSERS,
            "split": SPLITS,
            "augment": AUGMENTATIONS,
            "init": INITS,
            "mask_order": MASK_ORDERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainingError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "top_k", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.classes_per_image is not None and not 1 <= self.classes_per_image <= self.top_k:
            raise TrainingError(f"classes_per_image must be between 1 and top_k ({self.top_k}), got {self.classes_per_image}")
        if not self.data:
            raise TrainingError("no training data: give at least one folder or list file")
        if self.exclude_targets not in (None, "heldout"):
            raise TrainingError(f"exclude_targets {self.exclude_targets!r} is not one of heldout, None")
        if self.limit is not None and self.limit < 1:
            raise TrainingError(f"limit must be at least 1, got {self.limit}")
        if self.resume and self.overwrite:
            raise TrainingError("resume and overwrite exclude each other: continue the saved run or start over, not both")
        if not self.lr > 0:
            raise TrainingError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the card and the saved state."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["loss"] = self.loss.to_dict()  # the destroying/insertion weights only when on
        values["data"] = [str(source) for source in self.data]
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}

    def schedule_key(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one to continue the same schedule."""
        keep = ("backbone", "weights", "layers", "variant", "split", "limit", "epochs", "batch_size", "lr", "momentum",
                "weight_decay", "seed", "augment", "init", "fuser", "exclude_targets", "freeze_fuser", "top_k", "classes_per_image", "mask_order", "loss")
        values = self.to_dict()
        return {k: values[k] for k in keep}
