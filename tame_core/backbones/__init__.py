"""Backbones: the frozen classifiers TAME explains, by name (see :func:`load_backbone`)."""

from .base import (
    Backbone,
    LoadedWeights,
    RegisteredBackbone,
    Weights,
    get_backbone,
    list_backbones,
    load_state_dict_file,
    read_weights,
    register_backbone,
    wrap_classifier,
)
from .loading import load_backbone
from . import efficientnet_lite, torchvision_models  # noqa: F401  (register the built-in backbones)

DEFAULT_BACKBONE = "efficientnet_lite0"

__all__ = [
    "Backbone",
    "DEFAULT_BACKBONE",
    "RegisteredBackbone",
    "Weights",
    "get_backbone",
    "list_backbones",
    "load_backbone",
    "load_state_dict_file",
    "register_backbone",
    "read_weights",
    "LoadedWeights",
    "wrap_classifier",
]
