"""The frozen classifier being explained, and the one registry of backbones by name."""

from __future__ import annotations

import difflib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

from ..classes import checked_names, generic_class_names, resolve_class
from ..errors import BackboneError
from ..fingerprint import bytes_sha256
from ..preprocessing import Preprocess
from ..taps import find_module

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
        weights: "LoadedWeights | None" = None,
        pooled_layer: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net.eval().requires_grad_(False)
        self.default_layers = tuple(default_layers)
        self.source = source
        self.layer_aliases = dict(layer_aliases or {})
        #: What the classifier's weights were: "pretrained", "random" or a file (its name and SHA-256).
        self.weights_name = weights.name if weights is not None else ("random" if source == "random init" else "pretrained")
        self.weights_sha256 = weights.sha256 if weights is not None else None
        #: The layer the classifier global-pools into its one linear layer (None: not such a classifier).
        self.pooled_layer = pooled_layer
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.custom_class_names = False  # True once a user named the classes (set_class_names)
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.ones(1, 3, 1, 1), persistent=False)
        self.set_preprocess(preprocess)

    def set_preprocess(self, preprocess: Preprocess) -> None:
        """Use ``preprocess`` (size, crop, mean and std): a fine-tune may differ from its architecture's."""
        self.preprocess = preprocess
        self.mean.copy_(torch.tensor(preprocess.mean, dtype=self.mean.dtype).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(preprocess.std, dtype=self.std.dtype).view(1, 3, 1, 1))

    def set_class_names(self, names: Sequence[str], where: str = "class names") -> None:
        """Name the classifier's outputs; the count must be the classifier's."""
        names = tuple(names)
        if len(names) != len(self.class_names):
            raise BackboneError(
                f"{where} has {len(names)} names but the classifier {self.name!r} has {len(self.class_names)} outputs; "
                "give one name per output, in output order"
            )
        self.custom_class_names = names != self.class_names or self.custom_class_names
        self.class_names = names

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
class RegisteredBackbone:
    """What :func:`get_backbone` tells of a registered name: its one-line description and its factory."""

    name: str
    description: str
    factory: BackboneFactory


_REGISTRY: dict[str, RegisteredBackbone] = {}


def register_backbone(name: str, description: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make ``load_backbone(name)`` call the decorated ``factory(weights)``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = RegisteredBackbone(name, description or (factory.__doc__ or "").strip().splitlines()[0], factory)
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (any timm model loads too: :func:`load_backbone`)."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> RegisteredBackbone:
    """The registered backbone called ``name``; an unknown name fails in one line, with the closest names."""
    if name not in _REGISTRY:
        raise unknown_backbone(name)
    return _REGISTRY[name]


def unknown_backbone(name: str) -> BackboneError:
    """The one-line error for a name that is neither registered nor a timm model."""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BackboneError(
        f"unknown backbone {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))}; or any timm model as timm:<name>)"
    )


def registered_factory(name: str) -> BackboneFactory | None:
    """The factory registered as ``name``, or None (the name may still be a timm model)."""
    entry = _REGISTRY.get(name)
    return entry.factory if entry is not None else None


@dataclass(frozen=True)
class LoadedWeights:
    """A weights file read once: its state dict, its file name (never the path) and the SHA-256 of its bytes."""

    state: dict[str, torch.Tensor]
    name: str
    sha256: str


#: Largest weights file read (a ViT-H is 2.5 GB): a bound, so a wrong path cannot fill memory.
MAX_WEIGHTS_BYTES = 8 * 2**30


def read_weights(path: str | os.PathLike) -> LoadedWeights:
    """Read a weights file without unpickling arbitrary objects: ``.safetensors``, or ``.pt``/``.pth`` with
    ``weights_only=True``; a ``state_dict``/``model`` wrapper and a DDP ``module.`` prefix are taken off.
    The bytes are read once, so the SHA-256 is that of exactly what loads."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file {path.name} does not exist (or is not a regular file)")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise BackboneError(f"weights file {path.name} is over {MAX_WEIGHTS_BYTES >> 30} GB")
    try:
        raw = path.read_bytes()
        if path.suffix == ".safetensors" or raw[8:9] == b"{":
            from safetensors.torch import load as load_safetensors

            state: Any = load_safetensors(raw)
        else:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise BackboneError(
            f"cannot read weights file {path.name}: {' '.join(str(error).split())[:160]} "
            "(give a .safetensors file, or a .pt/.pth state dict that loads with weights_only=True)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"weights file {path.name} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    broken = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if broken is not None:
        raise BackboneError(f"weights file {path.name}: {broken} holds NaN or infinite values; the classifier cannot be used")
    return LoadedWeights(state, path.name, bytes_sha256(raw))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a weights file (see :func:`read_weights`)."""
    return read_weights(path).state


def classifier_outputs(state: dict[str, torch.Tensor], classifier: str, default: int) -> int:
    """How many classes a state dict's classifier (the module named ``classifier``) has; ``default`` when
    it does not hold that module (the load then names what is missing)."""
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 1 else default


def last_linear(net: nn.Module) -> str | None:
    """The name of the last ``nn.Linear`` in ``net``: the classifier of torchvision's models."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


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
        raise BackboneError(
            f"{what} do not fit the model: {'; '.join(parts)}; are they weights of another architecture? "
            "(name it with --backbone)"
        )
    net.load_state_dict(state, strict=True)


def net_with_weights(
    build: Callable[[int], nn.Module], weights: Weights, classifier: str | None, default_classes: int,
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> tuple[nn.Module, LoadedWeights | None]:
    """A network from ``build(num_classes)`` with random weights or a weights file's; the number of classes
    comes from the file's ``classifier`` weights, so a fine-tune with 10 or 101 classes just loads."""
    if weights == "random":
        return build(default_classes), None
    loaded = read_weights(weights)
    if rename is not None:
        loaded = LoadedWeights(rename(loaded.state), loaded.name, loaded.sha256)
    net = build(classifier_outputs(loaded.state, classifier, default_classes) if classifier else default_classes)
    load_strict(net, loaded.state, f"weights file {loaded.name}")
    return net, loaded


def classifier_module(net: nn.Module) -> nn.Linear | None:
    """The classifier's linear layer: timm's ``get_classifier()``, else the last ``nn.Linear`` (torchvision's)."""
    layer = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(layer, nn.Linear):
        name = last_linear(net)
        layer = dict(net.named_modules())[name] if name else None
    return layer if isinstance(layer, nn.Linear) else None


@torch.no_grad()
def find_pooled_layer(net: nn.Module, input_size: Sequence[int]) -> str | None:
    """The layer whose map the classifier global-average-pools into its one linear layer, found by running
    it once: what the class activation map (and so the little-data recipe's start) needs. None when the
    classifier is not such a pair (VGG's MLP, a ViT's class token)."""
    classifier = classifier_module(net)
    if classifier is None:
        return None
    outputs: list[tuple[str, torch.Tensor]] = []

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if (
                isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[1] == classifier.in_features
                and output.shape[2] * output.shape[3] > 1  # a map, not the pool's 1x1 output
            ):
                outputs.append((name, output))
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in net.named_modules() if name]
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    try:
        logits = net(torch.randn(2, 3, *input_size, generator=generator).to(device))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        return None
    tolerance = 1e-3 * max(1.0, float(logits.abs().max()))
    for name, output in reversed(outputs):
        pooled = classifier(output.float().mean(dim=(2, 3)))
        if float(output.min()) >= 0 and torch.allclose(pooled, logits.float(), rtol=1e-3, atol=tolerance):
            same = [other for other, tensor in outputs if tensor.data_ptr() == output.data_ptr() and tensor.shape == output.shape]
            return min(same, key=lambda n: (n.count("."), len(n)))
    return None


@torch.no_grad()
def wrap_classifier(
    model: nn.Module,
    class_names: Sequence[str] | None = None,
    *,
    layers: Sequence[str],
    input_size: Sequence[int] = (224, 224),
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    interpolation: str = "bilinear",
    crop_pct: float = 0.875,
    name: str = "custom",
) -> Backbone:
    """Any ``nn.Module`` classifier (normalised images in, logits out) as a :class:`Backbone`: for a model
    that is neither timm nor torchvision. ``layers`` are module names inside ``model`` to tap (see
    :func:`~tame_core.taps.list_layers`); ``class_names`` must have one name per output (default
    ``class 0``...). One forward of a blank image counts the outputs and finds the layer the classifier pools.

    Example:
        >>> backbone = wrap_classifier(my_net, ["ok", "scratch", "dent"], layers=["layer3", "layer4"])
        >>> head_config = Explainer(backbone, TAMEHead(...))  # or tame_core.training.train_head
    """
    if not isinstance(model, nn.Module):
        raise BackboneError(f"wrap_classifier takes a torch.nn.Module, got {type(model).__name__}")
    try:
        preprocess = Preprocess(tuple(input_size), tuple(mean), tuple(std), interpolation, crop_pct)  # type: ignore[arg-type]
    except ValueError as error:
        raise BackboneError(f"preprocessing: {error}") from None
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    logits = model.eval()(torch.zeros(1, 3, *preprocess.input_size, device=device))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise BackboneError(f"the model must return logits of shape (B, classes); it returned {type(logits).__name__}")
    count = int(logits.shape[1])
    names = generic_class_names(count) if class_names is None else checked_names(list(class_names), "class_names")
    backbone = Backbone(name, model, preprocess, generic_class_names(count), tuple(layers), "wrapped nn.Module",
                        pooled_layer=find_pooled_layer(model, preprocess.input_size))
    for layer in layers:
        find_module(backbone, layer)  # an unknown layer is named now
    if class_names is not None:
        backbone.set_class_names(names, "class_names")
    return backbone
