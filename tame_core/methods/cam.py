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

from contextlib import ExitStack, contextmanager
from types import ModuleType, SimpleNamespace
from typing import Callable, Iterator, Sequence

import numpy as np
import pytorch_grad_cam
import torch
import torch.nn.functional as F
from pytorch_grad_cam import ablation_cam
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..batching import check_batch_size
from ..taps import check_layers, find_module, output_to_map, patch_grid
from .base import Method, Model, register_method

#: A stand-in for the ``tqdm`` module whose bars draw nothing: ``tqdm.tqdm(iterable)`` is the iterable.
_SILENT_TQDM = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)


@contextmanager
def silent_tqdm(module: ModuleType) -> Iterator[None]:
    """Within the block, ``module``'s bars draw nothing; the original ``tqdm`` is back however the block
    ends. pytorch-grad-cam's Ablation-CAM draws a bar per image on stderr; our callers show their own
    progress (and a bar per batch would garble theirs)."""
    original = module.tqdm
    module.tqdm = _SILENT_TQDM
    try:
        yield
    finally:
        module.tqdm = original


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
    """One pytorch-grad-cam class behind the common interface: a forward per image, and a backward unless
    the class weighs channels without gradients (``backwards=0``: Eigen-CAM). Subclasses change what their
    pytorch-grad-cam object costs (:meth:`expected_passes`) and how it is built (:meth:`open_cam`)."""

    #: Images handed to pytorch-grad-cam per call (None: the whole batch).
    images_per_call: int | None = None
    #: Whether it makes a forward per channel, ``batch_size`` images at a time (Score-CAM, Ablation-CAM).
    batched_forwards: bool = False

    def __init__(self, name: str, cam_class: type, description: str, backwards: int = 1) -> None:
        self.name = name
        self.cam_class = cam_class
        self.description = description
        self.backwards = backwards

    def expected_passes(self, explainer: Model, *, layer: str | None = None, **options: object) -> tuple[int, int]:
        """One forward per image, and one backward for the gradient CAMs."""
        return 1, self.backwards

    def forward_batch(self, explainer: Model, *, batch_size: int | None = None, **options: object) -> int | None:
        return check_batch_size(batch_size, explainer.device) if self.batched_forwards else None

    def open_cam(self, stack: ExitStack, backbone: nn.Module, module: nn.Module, reshape: Callable, tokens: bool,
                 batch_size: int) -> pytorch_grad_cam.base_cam.BaseCAM:
        """The pytorch-grad-cam object reading ``module``, closed with ``stack`` (``tokens``: a ViT token layer;
        ``batch_size``: forwards per batch, for the CAMs that make many)."""
        return stack.enter_context(self.cam_class(model=backbone, target_layers=[module], reshape_transform=reshape))

    def compute(
        self,
        explainer: Model,
        images01: torch.Tensor,
        classes: torch.Tensor,
        *,
        layer: str | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``layer``: target layer name (default: :func:`default_target_layer`); ``batch_size``: images per
        forward for Score-CAM and Ablation-CAM (default :func:`~tame_core.batching.default_batch_size`:
        small on a CPU, where pytorch-grad-cam's 16 made Score-CAM 1.45 times slower than batches of 4)."""
        backbone = getattr(explainer, "backbone", explainer)
        tapped = getattr(explainer, "layers", None)  # an Explainer's head layers
        layer_name = backbone.resolve_layer(layer) if layer else default_target_layer(backbone, tapped)
        module = find_module(backbone, layer_name)
        input_hw = tuple(images01.shape[-2:])
        tokens = patch_grid(backbone.net, input_hw) is not None

        def reshape(tensor: torch.Tensor) -> torch.Tensor:
            return output_to_map(tensor, backbone.net, input_hw, module)

        step = self.images_per_call or images01.shape[0]
        maps = []
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())  # callers may be inside no_grad; CAMs need the graph
            cam = self.open_cam(stack, backbone, module, reshape, tokens, check_batch_size(batch_size, images01.device))
            for start in range(0, images01.shape[0], step):
                chunk = images01[start : start + step]
                if cam.uses_gradients:
                    chunk = chunk.detach().clone().requires_grad_(True)  # the backbone is frozen: grads flow from here
                targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + step].tolist()]
                maps.append(torch.from_numpy(cam(input_tensor=chunk, targets=targets)))
        return torch.cat(maps).to(images01.device)


class ScoreCamMethod(CamMethod):
    """Score-CAM: one forward per channel of the target layer, one image per call (each holds a masked copy
    per channel), the copies made ``batch_size`` at a time (:class:`ChunkedScoreCAM`)."""

    images_per_call = 1
    batched_forwards = True

    def expected_passes(self, explainer: Model, *, layer: str | None = None, **options: object) -> tuple[int, int]:
        """The forward for the activations, then one per channel of the target layer."""
        return 1 + target_channels(explainer, layer), 0

    def open_cam(self, stack: ExitStack, backbone: nn.Module, module: nn.Module, reshape: Callable, tokens: bool,
                 batch_size: int) -> pytorch_grad_cam.base_cam.BaseCAM:
        cam = super().open_cam(stack, backbone, module, reshape, tokens, batch_size)
        cam.batch_size = int(batch_size)
        return cam


class AblationCamMethod(CamMethod):
    """Ablation-CAM: the target layer's output replaced by one with each channel ablated in turn (the ViT
    token layout kept for token layers), put back when the call ends, stopped or not; no progress bars."""

    batched_forwards = True

    def expected_passes(self, explainer: Model, *, layer: str | None = None, **options: object) -> tuple[int, int]:
        """The forward for the activations, one for the clean scores, then one per ablated channel."""
        return 2 + target_channels(explainer, layer), 0

    def open_cam(self, stack: ExitStack, backbone: nn.Module, module: nn.Module, reshape: Callable, tokens: bool,
                 batch_size: int) -> pytorch_grad_cam.base_cam.BaseCAM:
        stack.enter_context(silent_tqdm(ablation_cam))
        ablation_layer = AblationLayerVit() if tokens else AblationLayer()
        cam = stack.enter_context(self.cam_class(
            model=backbone, target_layers=[module], reshape_transform=reshape, ablation_layer=ablation_layer,
            batch_size=int(batch_size),
        ))
        stack.callback(replace_layer_recursive, backbone, ablation_layer, module)  # a stopped run leaves no ablation layer
        return cam


for _method in (
    CamMethod("gradcam", pytorch_grad_cam.GradCAM, "Grad-CAM: channel weights = mean gradient"),
    CamMethod("gradcam++", pytorch_grad_cam.GradCAMPlusPlus, "Grad-CAM++: higher-order gradient weights"),
    CamMethod("xgradcam", pytorch_grad_cam.XGradCAM, "XGrad-CAM: activation-normalised gradient weights"),
    ScoreCamMethod("scorecam", ChunkedScoreCAM, "Score-CAM: weights from a forward per channel mask"),
    AblationCamMethod("ablationcam", pytorch_grad_cam.AblationCAM, "Ablation-CAM: weights from a forward per ablated channel"),
    CamMethod("layercam", pytorch_grad_cam.LayerCAM, "LayerCAM: element-wise positive-gradient weights"),
    CamMethod("eigencam", pytorch_grad_cam.EigenCAM, "Eigen-CAM: first principal component of the activations", backwards=0),
    CamMethod("hirescam", pytorch_grad_cam.HiResCAM, "HiResCAM: element-wise gradient times activation"),
):
    register_method(_method)
