"""Training TAME heads: the papers' losses and masking, any image folder, resumable, DDP-ready.

``train_head(TrainConfig(data=..., out=...))`` is the whole API; ``tame train`` is its command line.
"""

from ..errors import TrainingError
from .config import DEFAULT_RECIPE, RECIPES, TrainConfig
from ..splits import SPLITS, is_heldout_class, split_files
from .data import AUGMENTATIONS, readable_images
from .init import INITS, init_from_cam
from .losses import LossTerms, LossWeights, area_loss, destroy_loss, tame_loss, variation_loss
from .step import MASK_ORDERS, batch_loss, inserted_inputs, masked_logits, removed_inputs
from .trainer import train_head

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "AUGMENTATIONS",
    "INITS",
    "MASK_ORDERS",
    "SPLITS",
    "LossTerms",
    "LossWeights",
    "TrainConfig",
    "TrainingError",
    "area_loss",
    "batch_loss",
    "destroy_loss",
    "init_from_cam",
    "inserted_inputs",
    "is_heldout_class",
    "masked_logits",
    "readable_images",
    "removed_inputs",
    "split_files",
    "tame_loss",
    "train_head",
    "variation_loss",
]
