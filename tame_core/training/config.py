"""Everything a training run depends on, in one dataclass that the CLI, the app and the card share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..checkpoint import paths_for
from ..errors import TrainingError
from ..head import FUSERS, VARIANTS
from ..maps import MAX_MAP_BLUR
from ..splits import SPLITS
from .data import AUGMENTATIONS
from .init import INITS
from .losses import LossWeights
from .step import MASK_ORDERS


#: What ``recipe`` fills in for the options left unset. ``little-data`` (the default) is the recipe that
#: trained the bundled head on 7,409 unlabelled photos: every class's map starts as its class activation
#: map, and the fuser rows are the classifier's own rows times one projection, so every image trains every
#: class. It needs a classifier that global-pools one layer into a linear layer (ResNets, EfficientNets,
#: most timm CNNs); that layer is then the last one tapped. ``paper`` is the papers' recipe (a learned row
#: per class from a random start): it needs far more photos (ImageNet's 1.28 M), and suits VGG and ViTs.
RECIPES: dict[str, dict[str, Any]] = {
    "little-data": {"fuser": "tied", "init": "cam", "lr": 1e-2, "augment": "heavy", "epochs": 1},
    "paper": {"fuser": "class", "init": "random", "lr": 1e-3, "augment": "standard", "epochs": 8},
}
#: The default: ``little-data`` where the classifier global-pools a layer into one linear layer (it can start
#: from the class activation map), else ``paper`` (VGG's MLP classifier, a ViT's class token).
AUTO = "auto"
DEFAULT_RECIPE = AUTO


@dataclass
class TrainConfig:
    """A head training run. ``recipe`` fills the options left ``None`` (see :data:`RECIPES`).

    ``out`` is the head checkpoint (``.safetensors`` + ``.json`` card); the resumable state and the
    JSON-lines log go beside it unless ``state`` / ``log`` say otherwise. A run whose outputs already
    exist is refused unless it continues them (``resume``) or replaces them (``overwrite``).
    """

    data: list[Path]  # folders and/or .txt lists of image files (one path or several)
    out: Path
    backbone: str = "efficientnet_lite0"
    weights: str = "pretrained"  # backbone weights: "pretrained", "random" or a file (a fine-tune: any number of classes)
    labels: Path | None = None  # class names: one per line, or a JSON list (default: the architecture's)
    input_size: Sequence[int] | None = None  # preprocessing overrides for a fine-tune that differs from its architecture
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    recipe: str = DEFAULT_RECIPE
    layers: Sequence[str] | None = None  # None: the backbone's default layers (little-data: ending at the pooled layer)
    variant: str = "tame"
    fuser: str | None = None  # "tied": class rows = classifier rows x a shared projection (every image trains every class)
    split: str = "all"  # "train"/"heldout": the project's ImageNet split of the folder
    limit: int | None = None  # use only the first N images (sorted paths) of the split
    epochs: int | None = None
    batch_size: int = 32  # per process; DDP's global batch is this times the world size
    lr: float | None = None  # OneCycleLR's max learning rate
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # on weights; none on biases
    seed: int = 0
    augment: str | None = None
    init: str | None = None  # "cam": every class starts from its class activation map
    freeze_fuser: bool = False  # train only the branches: what is learned then applies to every class
    exclude_targets: str | None = None  # "heldout": never train a map whose target is a held-out ImageNet class
    top_k: int = 1  # train each image's maps for its top-k predicted classes...
    classes_per_image: int | None = None  # ...or for this many of them per step, drawn at random (None: all k)
    mask_order: str = "raw"  # "normalized": T-TAME's order for ViTs
    loss: LossWeights = field(default_factory=LossWeights)
    map_blur: float = 0.0  # the card's map blur (HeadMetadata.map_blur); training uses it only with blur_masks
    blur_masks: bool = False  # train on masks blurred by map_blur, so the classifier sees the maps users see
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
        if self.labels is not None:
            self.labels = Path(self.labels)
        if self.recipe != AUTO and self.recipe not in RECIPES:
            raise TrainingError(f"recipe {self.recipe!r} is not one of {', '.join([AUTO, *RECIPES])}")
        self._from_recipe = tuple(name for name in RECIPES["paper"] if getattr(self, name) is None)
        for name in self._from_recipe:  # auto: little-data until settle_recipe() knows the backbone
            setattr(self, name, RECIPES["little-data" if self.recipe == AUTO else self.recipe][name])
        self.validate()

    def settle_recipe(self, can_start_from_cam: bool) -> str:
        """Make an ``auto`` recipe concrete for the backbone (see :data:`AUTO`); returns the recipe's name."""
        if self.recipe == AUTO:
            self.recipe = "little-data" if can_start_from_cam else "paper"
            for name in self._from_recipe:
                setattr(self, name, RECIPES[self.recipe][name])
            self.validate()
        return self.recipe

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
        if not (math.isfinite(self.map_blur) and 0 <= self.map_blur <= MAX_MAP_BLUR):
            raise TrainingError(f"map_blur must be from 0 to {MAX_MAP_BLUR} (a fraction of the input's shorter side), got {self.map_blur}")
        if self.blur_masks and not self.map_blur:
            raise TrainingError("blur_masks blurs the training masks by map_blur: give a map_blur above 0")
        if not self.lr > 0:
            raise TrainingError(f"lr must be positive, got {self.lr}")

    def preprocess_overrides(self) -> dict[str, Any] | None:
        """The preprocessing fields this run sets (load_backbone's ``preprocess``), or None."""
        changes = {"input_size": self.input_size, "mean": self.mean, "std": self.std}
        return {k: list(v) for k, v in changes.items() if v is not None} or None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the card and the saved state."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["loss"] = self.loss.to_dict()  # the destroying/insertion weights only when on
        values["data"] = [str(source) for source in self.data]
        for key in ("input_size", "mean", "std"):
            values[key] = list(values[key]) if values[key] is not None else None
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}

    def schedule_key(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one to continue the same schedule."""
        keep = ("backbone", "weights", "labels", "input_size", "mean", "std", "recipe", "layers", "variant", "split", "limit", "epochs", "batch_size", "lr", "momentum",
                "weight_decay", "seed", "augment", "init", "fuser", "exclude_targets", "freeze_fuser", "top_k", "classes_per_image", "mask_order", "loss")
        values = self.to_dict()
        key = {k: values[k] for k in keep}
        if self.blur_masks:  # only then does the blur change training (and older states lack the field)
            key.update(blur_masks=True, map_blur=self.map_blur)
        return key
