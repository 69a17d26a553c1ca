"""Layer taps: read intermediate outputs of a backbone as (B, C, h, w) feature maps.

CNN layers give maps directly. Vision Transformer layers give token sequences (B, N, C): the
:func:`infer_token_layout` adapter finds how many of the N tokens are prefix tokens (class,
distillation, register) and the patch grid from the model and the input size, never assuming 14x14,
so non-square inputs and any patch size work. This is what T-TAME adds over TAME.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import LayerError

MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class TokenLayout:
    """How a (B, N, C) token sequence maps onto an image: ``prefix_tokens`` then a row-major grid."""

    prefix_tokens: int
    grid: tuple[int, int]


def patch_grid(net: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The patch grid a ViT-like ``net`` makes of an input of ``input_hw``, if it says."""
    patch_embed = getattr(net, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):  # timm
        grid = patch_embed.dynamic_feat_size(tuple(input_hw))
        return int(grid[0]), int(grid[1])
    patch = getattr(net, "patch_size", None)  # torchvision VisionTransformer
    if isinstance(patch, int):
        return input_hw[0] // patch, input_hw[1] // patch
    if isinstance(patch, (tuple, list)) and len(patch) == 2:
        return input_hw[0] // patch[0], input_hw[1] // patch[1]
    return None


def infer_token_layout(net: nn.Module, input_hw: tuple[int, int], num_tokens: int) -> TokenLayout:
    """Prefix-token count and patch grid for ``num_tokens`` tokens made from an ``input_hw`` image."""
    grid = patch_grid(net, input_hw)
    if grid is not None:
        prefix = num_tokens - grid[0] * grid[1]
        if 0 <= prefix <= MAX_PREFIX_TOKENS:
            return TokenLayout(prefix, grid)
    # No patch size to go by: the grid whose aspect ratio matches the input's, fewest prefix tokens first.
    aspect = input_hw[0] / input_hw[1]
    for prefix in range(0, MAX_PREFIX_TOKENS + 1):
        patches = num_tokens - prefix
        if patches <= 0:
            break
        rows = math.sqrt(patches * aspect)
        for candidate in {math.floor(rows), math.ceil(rows)}:
            if candidate > 0 and patches % candidate == 0:
                cols = patches // candidate
                if abs(candidate / cols - aspect) <= 0.02 * aspect:
                    return TokenLayout(prefix, (candidate, cols))
    raise LayerError(
        f"cannot arrange {num_tokens} tokens into a patch grid for a {input_hw[0]}x{input_hw[1]} input "
        f"(with up to {MAX_PREFIX_TOKENS} prefix tokens)"
    )


def tokens_to_map(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, N, C) tokens to a (B, C, rows, cols) map, dropping the prefix tokens."""
    rows, cols = layout.grid
    patches = tokens[:, layout.prefix_tokens :, :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols)


def output_to_map(output: object, net: nn.Module, input_hw: tuple[int, int], module: nn.Module) -> torch.Tensor:
    """A layer's output as a (B, C, h, w) map, or a :class:`LayerError` saying why it cannot be one."""
    if isinstance(output, (tuple, list)):
        raise LayerError(f"its output is a {type(output).__name__} of {len(output)} values, not one feature tensor")
    if not isinstance(output, torch.Tensor):
        raise LayerError(f"its output is {type(output).__name__}, not a tensor")
    if output.ndim == 4:
        if getattr(net, "output_fmt", "NCHW") == "NHWC" and not isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            return output.permute(0, 3, 1, 2)  # channels-last stages (timm Swin and the like)
        return output
    if output.ndim == 3:
        return tokens_to_map(output, infer_token_layout(net, input_hw, output.shape[1]))
    shape = ", ".join(["B", *map(str, output.shape[1:])])
    raise LayerError(f"its output has shape ({shape}): no spatial layout (need (B, C, H, W) maps or (B, N, C) tokens)")


def module_name(backbone: nn.Module, layer: str) -> str:
    """The module name ``layer`` stands for: a :class:`~tame_core.backbones.Backbone` follows its aliases
    (:meth:`~tame_core.backbones.Backbone.resolve_layer`); a bare network has none."""
    resolve = getattr(backbone, "resolve_layer", None)
    return resolve(layer) if resolve is not None else layer


def find_module(backbone: nn.Module, layer: str) -> nn.Module:
    """The submodule ``layer`` names in a backbone or a bare network, or a LayerError that suggests close names."""
    modules = dict(getattr(backbone, "net", backbone).named_modules())
    name = module_name(backbone, layer)
    if name and name in modules:
        return modules[name]
    close = difflib.get_close_matches(layer, [n for n in modules if n], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    model = getattr(backbone, "name", None)
    where = f" in {model}" if isinstance(model, str) else ""
    listing = f"`tame layers --backbone {model}`" if isinstance(model, str) else "`tame_core.list_layers(model)`"
    raise LayerError(f"unknown layer {layer!r}{where}{hint} (list its layers with {listing})")


class LayerTaps:
    """Forward hooks on ``layers`` of a backbone that capture their outputs as feature maps.

    Use as a context manager; the hooks are removed on exit, also when the forward raises::

        with LayerTaps(backbone, ["layer2", "layer3"]) as taps:
            logits = backbone(x)
        maps = taps.features  # [(B, 512, 28, 28), (B, 1024, 14, 14)]
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str]) -> None:
        if not layers:
            raise LayerError("no layers to tap")
        if len(set(layers)) != len(layers):
            raise LayerError(f"layers are repeated: {list(layers)}")
        self.net: nn.Module = getattr(backbone, "net", backbone)
        self.layers = list(layers)
        self.modules = [find_module(backbone, layer) for layer in self.layers]
        self._outputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._input_hw: tuple[int, int] = (0, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "LayerTaps":
        self._outputs = [None] * len(self.layers)
        self._handles.append(self.net.register_forward_pre_hook(self._record_input))
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record_input(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            self._input_hw = tuple(args[0].shape[-2:])

    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            try:
                self._outputs[index] = output_to_map(output, self.net, self._input_hw, module)
            except LayerError as error:
                raise LayerError(f"layer {self.layers[index]!r} cannot be tapped: {error}") from None

        return hook

    @property
    def features(self) -> list[torch.Tensor]:
        missing = [layer for layer, out in zip(self.layers, self._outputs) if out is None]
        if missing:
            raise LayerError(f"layers {missing} did not run in the forward pass")
        return list(self._outputs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayerInfo:
    """One layer as the layer picker shows it: can it be tapped, and what map does it give."""

    name: str
    module_type: str
    output_shape: tuple[int, ...] | None
    channels: int | None = None
    map_size: tuple[int, int] | None = None
    kind: str | None = None  # "spatial" or "tokens"
    reason: str | None = None  # why it cannot be tapped

    @property
    def usable(self) -> bool:
        return self.reason is None


@torch.no_grad()
def list_layers(backbone: nn.Module, input_size: tuple[int, int] | None = None) -> list[LayerInfo]:
    """Every named layer of the backbone with its output shape and whether it can be tapped.

    Runs one forward of a blank image at ``input_size`` (the backbone's own by default).
    """
    net: nn.Module = getattr(backbone, "net", backbone)
    if input_size is None:
        input_size = tuple(backbone.preprocess.input_size)  # type: ignore[union-attr]
    named = [(name, module) for name, module in net.named_modules() if name]
    outputs: dict[str, list[object]] = {name: [] for name, _ in named}
    handles = []
    try:
        for name, module in named:
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: outputs[name].append(out)))
        parameter = next(net.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        backbone(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    infos = []
    for name, module in named:
        calls = outputs[name]
        kind_name = type(module).__name__
        if not calls:
            infos.append(LayerInfo(name, kind_name, None, reason="does not run in the forward pass"))
            continue
        first = calls[-1]
        shape = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else None
        if len(calls) > 1:
            infos.append(LayerInfo(name, kind_name, shape, reason=f"runs {len(calls)} times per forward pass"))
            continue
        try:
            feature = output_to_map(first, net, tuple(input_size), module)
        except LayerError as error:
            infos.append(LayerInfo(name, kind_name, shape, reason=str(error)))
            continue
        kind = "tokens" if isinstance(first, torch.Tensor) and first.ndim == 3 else "spatial"
        infos.append(LayerInfo(name, kind_name, shape, feature.shape[1], tuple(feature.shape[2:]), kind))
    return infos


def check_layers(backbone: nn.Module, layers: Sequence[str]) -> list[LayerInfo]:
    """The :class:`LayerInfo` of each of ``layers``, raising a LayerError for any that cannot be tapped."""
    for layer in layers:
        find_module(backbone, layer)
    infos = {info.name: info for info in list_layers(backbone)}
    result = []
    for layer in layers:
        info = infos[module_name(backbone, layer)]
        if not info.usable:
            raise LayerError(f"layer {layer!r} cannot be tapped: {info.reason}")
        result.append(info)
    return result
