"""The frozen classifier being explained, and the one registry of backbones by name."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
from torch import nn

from ..classes import resolve_class
from ..errors import BackboneError
from ..preprocessing import Preprocess

#: ``"pretrained"`` (the real weights: bundled, cached or downloaded), ``"random"`` (random init, for
#: tests) or a path to a local weights file (.safetensors, or a torch file read with weights_only=True).
Weights = Union[str, os.PathLike]


class Backbone(nn.Module):
    """A frozen classifier that takes **raw [0, 1] images** and returns logits.

    Normalisation lives inside, so heads, metrics and comparison methods all feed the same raw images and a
    mask can multiply the picture before it is normalised. ``net`` is the underlying torchvision or
    timm model: layer names for taps are names inside ``net``. The classifier never leaves eval mode
    (its batch-norm statistics must not drift while a head trains), whatever ``train()`` is called with.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        preprocess: Preprocess,
        class_names: Sequence[str],
        default_layers: Sequence[str],
        source: str = "",
        layer_aliases: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.class_names = tuple(class_names)
        self.default_layers = tuple(default_layers)
        self.source = source
        self.layer_aliases = dict(layer_aliases or {})
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x01))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        self.net.eval()
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def class_index(self, query: int | str) -> int:
        return resolve_class(query, self.class_names)

    def resolve_layer(self, layer: str) -> str:
        """The module name for ``layer``, following aliases (e.g. T-TAME's FX node names)."""
        return self.layer_aliases.get(layer, layer)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, source={self.source!r}, classes={self.num_classes}"


BackboneFactory = Callable[[Weights], Backbone]


@dataclass(frozen=True)
class _Entry:
    factory: BackboneFactory
    description: str


_REGISTRY: dict[str, _Entry] = {}
TIMM_PREFIX = "timm:"


def register_backbone(name: str, description: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make ``load_backbone(name)`` call the decorated ``factory(weights)``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = _Entry(factory, description or (factory.__doc__ or "").strip().splitlines()[0])
        return factory

    return decorate


def list_backbones() -> dict[str, str]:
    """Registered backbone names with a one-line description (any timm model works too)."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def load_backbone(name: str, weights: Weights = "pretrained", device: torch.device | str = "cpu") -> Backbone:
    """The frozen classifier called ``name``, on ``device``, in eval mode.

    ``name`` is a registered name (``efficientnet_lite0``, ``vgg16``, ``resnet50``, ``vit_b_16``), or any
    timm model as ``timm:<name>`` or plain ``<name>``.
    """
    from . import timm_models  # registers nothing, resolves any timm name

    if name in _REGISTRY:
        backbone = _REGISTRY[name].factory(weights)
    elif name.startswith(TIMM_PREFIX) or timm_models.is_timm_model(name):
        backbone = timm_models.load_timm_backbone(name.removeprefix(TIMM_PREFIX), weights)
    else:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(
            f"unknown backbone {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))}; "
            "or any timm model as timm:<name>)"
        )
    return backbone.to(device)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects (safetensors or weights_only torch.load)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise BackboneError(f"cannot read weights file {path}: {' '.join(str(error).split())[:200]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message that names the first differences."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise BackboneError(f"{what} do not fit the model: {'; '.join(parts)}")
    net.load_state_dict(state, strict=True)
