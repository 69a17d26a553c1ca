"""The Grad-CAM family through pytorch-grad-cam, on CNNs and ViTs.

pytorch-grad-cam holds the hooks and the per-method weighting; we give it the backbone (raw [0, 1]
images in, so Score-CAM's masks multiply the picture before normalisation, like every other method
here), a target layer, and the engine's token adapter as the reshape transform, so ViT token layers
become (B, C, h, w) maps exactly as TAME's taps see them.

The default target layer is TAME's deepest tapped layer when an :class:`~tame_core.explainer.Explainer`
is given (both methods then read the same features; the bundled EfficientNet-Lite0 head taps ``bn2``,
the last conv layer), else the backbone's deepest default layer (ResNet-50 ``layer4``, VGG-16
``features.30``, EfficientNet-Lite0 ``blocks.6``, ViT-B/16 the last block's first LayerNorm). If that
layer is a transformer block, its first norm is used, as pytorch-grad-cam advises (a block's output
gets gradient only through the class token). ``layer=`` overrides it.
"""

from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace
from typing import Sequence
from unittest import mock

import numpy as np
import pytorch_grad_cam
import torch
import torch.nn.functional as F
from pytorch_grad_cam import ablation_cam
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..taps import check_layers, find_module, output_to_map, patch_grid
from .base import Method, Model, register_method

#: pytorch-grad-cam's Ablation-CAM draws a tqdm bar per image; our callers show their own progress.
_SILENT_TQDM = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)


def default_target_layer(backbone: nn.Module, layers: Sequence[str] | None = None) -> str:
    """The module CAMs read by default: the deepest of ``layers`` (default: the backbone's default layers),
    or that transformer block's first norm."""
    name = backbone.resolve_layer((layers or backbone.default_layers)[-1])
    module = find_module(backbone, name)
    for norm in ("norm1", "ln_1"):
        if isinstance(getattr(module, norm, None), nn.Module):
            return f"{name}.{norm}"
    return name


def target_channels(explainer: Model, layer: str | None = None) -> int:
    """Channels of the layer a CAM reads: one forward each for Score-CAM and Ablation-CAM."""
    backbone = getattr(explainer, "backbone", explainer)
    head = getattr(explainer, "head", None)
    if layer is None and head is not None:
        return int(head.channels[-1])  # the deepest tapped layer (or its block's norm: the same width)
    name = backbone.resolve_layer(layer) if layer else default_target_layer(backbone)
    return int(check_layers(backbone, [name])[0].channels)


class ChunkedScoreCAM(pytorch_grad_cam.ScoreCAM):
    """pytorch-grad-cam's Score-CAM with each batch of masked copies built just before its forward.

    The weights are the same, but the upstream code upsamples every channel and multiplies the image by
    all of them at once (1.1 GB for a 1280-channel layer at 224 x 336) before its first forward: a long
    pause in which nothing can be stopped. Here a Stop takes effect at the next forward of a batch.
    """

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        size = tuple(input_tensor.shape[-2:])
        batch_size = getattr(self, "batch_size", 16)
        scores = []
        with torch.no_grad():
            channels = torch.from_numpy(activations).to(self.device)
            for image, target, maps in zip(input_tensor, targets, channels):
                for start in range(0, maps.shape[0], batch_size):
                    # UpsamplingBilinear2d, as upstream: bilinear with aligned corners
                    part = maps[start : start + batch_size, None]
                    chunk = F.interpolate(part, size=size, mode="bilinear", align_corners=True)
                    flat = chunk.flatten(1)
                    low, high = flat.min(dim=1).values, flat.max(dim=1).values
                    chunk = (chunk - low[:, None, None, None]) / (high - low + 1e-8)[:, None, None, None]
                    scores.extend(target(output).cpu().item() for output in self.model(image[None] * chunk))
        weights = torch.tensor(scores, dtype=torch.float32).view(activations.shape[0], activations.shape[1])
        return torch.softmax(weights, dim=-1).numpy()


class CamMethod(Method):
    """One pytorch-grad-cam class behind the common interface."""

    def __init__(self, name: str, cam_class: type, description: str, images_per_call: int | None = None) -> None:
        self.name = name
        self.cam_class = cam_class
        self.description = description
        self.images_per_call = images_per_call  # Score-CAM holds (images x channels) masked copies at once

    def expected_passes(self, explainer: Model, *, layer: str | None = None, **options: object) -> tuple[int, int]:
        """A forward (and backward, for gradient CAMs); Score-CAM then one forward per channel of the
        target layer, Ablation-CAM one more forward for the clean scores and one per channel."""
        if issubclass(self.cam_class, pytorch_grad_cam.ScoreCAM):
            return 1 + target_channels(explainer, layer), 0
        if self.cam_class is pytorch_grad_cam.AblationCAM:
            return 2 + target_channels(explainer, layer), 0
        return 1, 0 if self.cam_class is pytorch_grad_cam.EigenCAM else 1

    def compute(
        self,
        explainer: Model,
        images01: torch.Tensor,
        classes: torch.Tensor,
        *,
        layer: str | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``layer``: target layer name (default: :func:`default_target_layer`); ``batch_size``: forwards per
        batch for Score-CAM and Ablation-CAM (pytorch-grad-cam's defaults 16 and 32)."""
        backbone = getattr(explainer, "backbone", explainer)
        tapped = getattr(explainer, "layers", None)  # an Explainer's head layers
        layer_name = backbone.resolve_layer(layer) if layer else default_target_layer(backbone, tapped)
        module = find_module(backbone, layer_name)
        input_hw = tuple(images01.shape[-2:])
        tokens = patch_grid(backbone.net, input_hw) is not None

        def reshape(tensor: torch.Tensor) -> torch.Tensor:
            return output_to_map(tensor, backbone.net, input_hw, module)

        keywords = {}
        if self.cam_class is pytorch_grad_cam.AblationCAM:
            keywords["ablation_layer"] = AblationLayerVit() if tokens else AblationLayer()
            if batch_size:
                keywords["batch_size"] = int(batch_size)
        step = self.images_per_call or images01.shape[0]
        maps = []
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())  # callers may be inside no_grad; CAMs need the graph
            stack.enter_context(mock.patch.object(ablation_cam, "tqdm", _SILENT_TQDM))
            cam = stack.enter_context(
                self.cam_class(model=backbone, target_layers=[module], reshape_transform=reshape, **keywords)
            )
            if batch_size and issubclass(self.cam_class, pytorch_grad_cam.ScoreCAM):
                cam.batch_size = int(batch_size)
            if "ablation_layer" in keywords:  # a stopped run must not leave the ablation layer in the model
                stack.callback(replace_layer_recursive, backbone, keywords["ablation_layer"], module)
            for start in range(0, images01.shape[0], step):
                chunk = images01[start : start + step]
                if cam.uses_gradients:
                    chunk = chunk.detach().clone().requires_grad_(True)  # the backbone is frozen: grads flow from here
                targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + step].tolist()]
                maps.append(torch.from_numpy(cam(input_tensor=chunk, targets=targets)))
        return torch.cat(maps).to(images01.device)


_FAMILY = (
    ("gradcam", pytorch_grad_cam.GradCAM, "Grad-CAM: channel weights = mean gradient", None),
    ("gradcam++", pytorch_grad_cam.GradCAMPlusPlus, "Grad-CAM++: higher-order gradient weights", None),
    ("xgradcam", pytorch_grad_cam.XGradCAM, "XGrad-CAM: activation-normalised gradient weights", None),
    ("scorecam", ChunkedScoreCAM, "Score-CAM: weights from a forward per channel mask", 1),
    ("ablationcam", pytorch_grad_cam.AblationCAM, "Ablation-CAM: weights from a forward per ablated channel", None),
    ("layercam", pytorch_grad_cam.LayerCAM, "LayerCAM: element-wise positive-gradient weights", None),
    ("eigencam", pytorch_grad_cam.EigenCAM, "Eigen-CAM: first principal component of the activations", None),
    ("hirescam", pytorch_grad_cam.HiResCAM, "HiResCAM: element-wise gradient times activation", None),
)

for _name, _cam_class, _description, _per_call in _FAMILY:
    register_method(CamMethod(_name, _cam_class, _description, _per_call))
