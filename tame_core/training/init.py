"""Start every class from its class activation map (CAM), so classes never seen in training explain sensibly.

When the last tapped layer is the one the classifier global-pools (EfficientNet-Lite0's ``bn2``), the
classifier's weight row of class c, applied at each position of that layer, *is* c's CAM. We make the
last branch an identity (its batch-norm scale starts at 0, so ``relu(0 + x) = x`` for the non-negative
pooled features), put the classifier's rows in that branch's fuser columns and zeros in the others.
A scale and offset from one batch put the predicted classes' maps in the sigmoid's useful range; the
explained maps are min-max normalised, so they do not depend on that choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.base import classifier_module
from ..errors import TrainingError
from ..head import TAMEHead, TiedFuser, TiedTAMEHead
from ..taps import LayerTaps

INITS = ("random", "cam")


def classifier_of(backbone: Backbone) -> nn.Linear:
    """The final linear layer that maps pooled features to logits."""
    layer = classifier_module(backbone.net)
    if layer is None:
        raise TrainingError(
            f"--init cam and --fuser tied need a classifier that ends in global pooling + one linear layer; {backbone.name} does not"
        )
    return layer


def new_head(channels: Sequence[int], backbone: Backbone, variant: str = "tame", fuser: str = "class") -> TAMEHead:
    """An untrained head for ``backbone``: the papers' per-class fuser, or one tied to its classifier's rows."""
    if fuser == "class":
        return TAMEHead(channels, backbone.num_classes, variant)
    classifier = classifier_of(backbone)
    return TiedTAMEHead(channels, classifier.weight, classifier.bias, variant, residual=fuser == "tied_residual")


@torch.no_grad()
def init_from_cam(head: TAMEHead, backbone: Backbone, layers: Sequence[str], inputs01: torch.Tensor) -> None:
    """Initialise ``head`` so each class's map is its CAM, scaled using the batch ``inputs01``.

    A tied fuser (:class:`~tame_core.head.TiedFuser`) must hold this classifier's rows; its projection
    then starts as a scaled identity on the last branch and zero on the others.
    """
    if head.variant != "tame":
        raise TrainingError(f"--init cam needs the 'tame' head variant (a skip connection and ReLU), not {head.variant!r}")
    classifier = classifier_of(backbone)
    with LayerTaps(backbone, layers) as taps:
        logits = backbone(inputs01.to(backbone.device)).float()
    pooled = taps.features[-1].float()
    if pooled.shape[1] != classifier.in_features or float(pooled.min()) < 0:
        raise TrainingError(
            f"--init cam needs the last layer to be the non-negative features the classifier pools "
            f"(for efficientnet_lite0: bn2); {layers[-1]!r} is not"
        )
    pooled_logits = classifier(pooled.mean(dim=(2, 3)))
    if not torch.allclose(pooled_logits, logits, rtol=1e-3, atol=1e-3 * float(logits.abs().max())):
        raise TrainingError(f"--init cam: the classifier does not global-pool layer {layers[-1]!r} (for efficientnet_lite0: bn2)")
    weight, bias = classifier.weight.float(), classifier.bias.float()
    top = logits.argmax(dim=1)
    cams = torch.einsum("bchw,bc->bhw", pooled, weight[top]) + bias[top][:, None, None]
    scale = 1.0 / max(float(cams.std()), 1e-6)
    offset = float(cams.mean())
    last = head.branches[-1]
    last.bn.weight.zero_()
    last.bn.bias.zero_()
    fuser = head.fuser
    if isinstance(fuser, TiedFuser):  # rows = classifier rows x projection: the projection starts as scale x identity
        fuser.projection.zero_()
        identity = torch.eye(weight.shape[1], device=fuser.projection.device)
        fuser.projection[:, head.slices[-1]] = scale * fuser.class_scale * identity  # rows: (W / class_scale) @ P
        fuser.offset.zero_()
        fuser.bias_scale.fill_(scale)
        fuser.shift.fill_(-scale * offset)
        if fuser.residual is not None:
            fuser.residual.zero_()
        return
    fuser.weight.zero_()
    fuser.weight[:, head.slices[-1], 0, 0] = scale * weight.to(fuser.weight.device)
    fuser.bias.copy_(scale * (bias - offset))
