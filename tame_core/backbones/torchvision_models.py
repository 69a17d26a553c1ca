"""torchvision classifiers with the papers' layers: VGG-16, ResNet-50 (TAME) and ViT-B-16 (T-TAME).

Pretrained weights come through torchvision's own path (``IMAGENET1K_V1``: downloaded from
download.pytorch.org once, then read from ``$TORCH_HOME/hub/checkpoints``); a local file works too.
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from ..classes import generic_class_names, imagenet_class_names
from ..errors import BackboneError
from ..preprocessing import Preprocess
from .base import Backbone, Weights, net_with_weights, register_backbone

#: T-TAME names ViT layers by torchvision FX node: in each encoder block the node ``ln`` is the call of
#: module ``ln_1`` (and node ``ln_1`` the call of ``ln_2``). We hook modules, so we map the names.
_VIT_FX_ALIASES = {f"encoder.layers.encoder_layer_{i}.ln": f"encoder.layers.encoder_layer_{i}.ln_1" for i in range(12)}


def torchvision_preprocess(name: str, fixed_input_size: bool = False) -> Preprocess:
    """The evaluation transform torchvision publishes with ``name``'s IMAGENET1K_V1 weights."""
    transform = torchvision.models.get_model_weights(name).IMAGENET1K_V1.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    return Preprocess(
        input_size=(crop, crop), mean=tuple(transform.mean), std=tuple(transform.std),
        interpolation=transform.interpolation.value, crop_pct=crop / resize, fixed_input_size=fixed_input_size,
    )


def _torchvision_backbone(
    name: str, weights: Weights, default_layers: tuple[str, ...], classifier: str, pooled_layer: str | None = None,
    fixed_input_size: bool = False, aliases: dict | None = None,
) -> Backbone:
    builder: Callable[..., nn.Module] = getattr(torchvision.models, name)
    loaded = None
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
        net, loaded = net_with_weights(lambda classes: builder(weights=None, num_classes=classes), weights, classifier, 1000)
        source = "random init" if loaded is None else loaded.name
    classes = int(dict(net.named_modules())[classifier].out_features)
    names = imagenet_class_names() if classes == 1000 else generic_class_names(classes)
    preprocess = torchvision_preprocess(name, fixed_input_size)
    return Backbone(name, net, preprocess, names, default_layers, source, aliases, weights=loaded, pooled_layer=pooled_layer)


@register_backbone("vgg16", "torchvision VGG-16 (IMAGENET1K_V1); TAME layers features.16/23/30")
def vgg16(weights: Weights = "pretrained") -> Backbone:
    return _torchvision_backbone("vgg16", weights, ("features.16", "features.23", "features.30"), "classifier.6")


@register_backbone("resnet50", "torchvision ResNet-50 (IMAGENET1K_V1); TAME layers layer2/3/4")
def resnet50(weights: Weights = "pretrained") -> Backbone:
    return _torchvision_backbone("resnet50", weights, ("layer2", "layer3", "layer4"), "fc", pooled_layer="layer4")


@register_backbone("vit_b_16", "torchvision ViT-B/16 (IMAGENET1K_V1); T-TAME layers: LayerNorm of blocks 9-11")
def vit_b_16(weights: Weights = "pretrained") -> Backbone:
    layers = tuple(f"encoder.layers.encoder_layer_{i}.ln_1" for i in (9, 10, 11))
    return _torchvision_backbone("vit_b_16", weights, layers, "heads.head", fixed_input_size=True, aliases=_VIT_FX_ALIASES)
