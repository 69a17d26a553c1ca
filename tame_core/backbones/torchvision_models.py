"""torchvision classifiers with the papers' layers: VGG-16, ResNet-50 (TAME) and ViT-B-16 (T-TAME).

Pretrained weights come through torchvision's own path (``IMAGENET1K_V1``: downloaded from
download.pytorch.org once, then read from ``$TORCH_HOME/hub/checkpoints``); a local file works too.
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from ..classes import imagenet_class_names
from ..errors import BackboneError
from ..preprocessing import Preprocess
from .base import Backbone, Weights, load_state_dict_file, load_strict, register_backbone

_IMAGENET = Preprocess(input_size=(224, 224), interpolation="bilinear", crop_pct=224 / 256)

#: T-TAME names ViT layers by torchvision FX node: in each encoder block the node ``ln`` is the call of
#: module ``ln_1`` (and node ``ln_1`` the call of ``ln_2``). We hook modules, so we map the names.
_VIT_FX_ALIASES = {f"encoder.layers.encoder_layer_{i}.ln": f"encoder.layers.encoder_layer_{i}.ln_1" for i in range(12)}


def _torchvision_backbone(
    name: str, weights: Weights, default_layers: tuple[str, ...], preprocess: Preprocess, aliases: dict | None = None
) -> Backbone:
    builder: Callable[..., nn.Module] = getattr(torchvision.models, name)
    if weights == "pretrained":
        enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            net = builder(weights=enum)
        except Exception as error:  # noqa: BLE001 - network and cache failures alike
            file_name = enum.url.rsplit("/", 1)[-1]
            raise BackboneError(
                f"cannot get {name} IMAGENET1K_V1 weights from {enum.url} ({type(error).__name__}); when offline, "
                f"pass a local file as weights or put it at $TORCH_HOME/hub/checkpoints/{file_name}"
            ) from None
        source = f"torchvision {name} IMAGENET1K_V1"
    else:
        net = builder(weights=None)
        source = "random init"
        if weights != "random":
            load_strict(net, load_state_dict_file(weights), f"weights from {weights}")
            source = str(weights)
    return Backbone(name, net, preprocess, imagenet_class_names(), default_layers, source, aliases)


@register_backbone("vgg16", "torchvision VGG-16 (IMAGENET1K_V1); TAME layers features.16/23/30")
def vgg16(weights: Weights = "pretrained") -> Backbone:
    return _torchvision_backbone("vgg16", weights, ("features.16", "features.23", "features.30"), _IMAGENET)


@register_backbone("resnet50", "torchvision ResNet-50 (IMAGENET1K_V1); TAME layers layer2/3/4")
def resnet50(weights: Weights = "pretrained") -> Backbone:
    return _torchvision_backbone("resnet50", weights, ("layer2", "layer3", "layer4"), _IMAGENET)


@register_backbone("vit_b_16", "torchvision ViT-B/16 (IMAGENET1K_V1); T-TAME layers: LayerNorm of blocks 9-11")
def vit_b_16(weights: Weights = "pretrained") -> Backbone:
    layers = tuple(f"encoder.layers.encoder_layer_{i}.ln_1" for i in (9, 10, 11))
    preprocess = Preprocess(input_size=(224, 224), interpolation="bilinear", crop_pct=224 / 256, fixed_input_size=True)
    return _torchvision_backbone("vit_b_16", weights, layers, preprocess, _VIT_FX_ALIASES)
