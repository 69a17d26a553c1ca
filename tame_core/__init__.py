"""tame_core: explain frozen image classifiers with trained attention heads (TAME / T-TAME).

The pipeline reads in module order: backbones -> taps -> head -> explainer (maps) -> metrics.
"""

from .backbones import DEFAULT_BACKBONE, Backbone, list_backbones, load_backbone, wrap_classifier
from .checkpoint import HeadMetadata, load_head, save_head
from .errors import TameError
from .explainer import Explainer, Explanation
from .head import VARIANTS, TAMEHead
from .images import load_image
from .taps import LayerTaps, list_layers

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKBONE",
    "VARIANTS",
    "Backbone",
    "Explainer",
    "Explanation",
    "HeadMetadata",
    "LayerTaps",
    "TAMEHead",
    "TameError",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "load_head",
    "load_image",
    "save_head",
    "wrap_classifier",
]
