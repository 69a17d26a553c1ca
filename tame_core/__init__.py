"""tame_core: explain frozen image classifiers with trained attention heads (TAME / T-TAME).

The pipeline reads in module order: backbones -> taps -> head -> explainer (maps) -> metrics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Where each public name lives. They are imported on first use (PEP 562), so ``import tame_core`` and the
#: ``tame`` command start without PyTorch: a Ctrl-C while it loads lands inside the command's own handler.
_EXPORTS = {
    "DEFAULT_BACKBONE": ".backbones", "Backbone": ".backbones", "list_backbones": ".backbones", "load_backbone": ".backbones",
    "wrap_classifier": ".backbones",
    "HeadMetadata": ".card", "load_head": ".checkpoint", "save_head": ".checkpoint",
    "TameError": ".errors",
    "Explainer": ".explainer", "Explanation": ".explainer",
    "VARIANTS": ".head", "TAMEHead": ".head",
    "load_image": ".images",
    "LayerTaps": ".taps", "list_layers": ".taps",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .backbones import DEFAULT_BACKBONE, Backbone, list_backbones, load_backbone, wrap_classifier
    from .card import HeadMetadata
    from .checkpoint import load_head, save_head
    from .errors import TameError
    from .explainer import Explainer, Explanation
    from .head import VARIANTS, TAMEHead
    from .images import load_image
    from .taps import LayerTaps, list_layers


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tame_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
