"""Loading a backbone by name: a registered one (``efficientnet_lite0``, ``vgg16``...) or any timm model.

It sits above :mod:`.base` (the registry) and the modules that register backbones, so the one loader
reaches every kind of backbone without an import in a circle.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import BackboneError
from ..preprocessing import Preprocess
from . import timm_models
from .base import Backbone, Weights, registered_factory, unknown_backbone

#: Prefix that names a timm model explicitly (``timm:resnet18``); a plain timm name works too.
TIMM_PREFIX = "timm:"


def load_backbone(
    name: str,
    weights: Weights = "pretrained",
    device: torch.device | str = "cpu",
    *,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | dict[str, Any] | None = None,
) -> Backbone:
    """The frozen classifier called ``name``, on ``device``, in eval mode.

    ``name`` is a registered name (``efficientnet_lite0``, ``vgg16``, ``resnet50``, ``vit_b_16``), or any
    timm model as ``timm:<name>`` or plain ``<name>``. ``weights`` is ``"pretrained"``, ``"random"`` or a
    state-dict file: a fine-tune with any number of classes (read from its classifier's weights).
    ``class_names`` name the outputs (their count must match); ``preprocess`` replaces the architecture's
    preprocessing, whole or in part (``{"input_size": [256, 256], "mean": [...], "std": [...]}``).
    """
    factory = registered_factory(name)
    if factory is not None:
        backbone = factory(weights)
    elif name.startswith(TIMM_PREFIX) or timm_models.is_timm_model(name):
        backbone = timm_models.load_timm_backbone(name.removeprefix(TIMM_PREFIX), weights)
    else:
        raise unknown_backbone(name)
    if preprocess is not None:
        backbone.set_preprocess(preprocess_with(backbone.preprocess, preprocess))
    if class_names is not None:
        backbone.set_class_names(class_names)
    return backbone.to(device)


def preprocess_with(base: Preprocess, changes: Preprocess | dict[str, Any]) -> Preprocess:
    """``base`` with the fields ``changes`` gives (a whole :class:`Preprocess` replaces it), each checked."""
    if isinstance(changes, Preprocess):
        return changes
    try:
        return Preprocess.from_dict({**base.to_dict(), **{k: v for k, v in changes.items() if v is not None}})
    except (TypeError, ValueError) as error:
        raise BackboneError(f"preprocessing: {error}") from None
