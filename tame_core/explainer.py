"""One-pass explanations: backbone -> layer taps -> head -> maps.

An :class:`Explainer` runs the frozen backbone once per batch, keeping the logits and the head's
branch features. Maps for any class and any set of switched-off branches then need only the fuser
(a matrix product over the cached features): that is what makes class switches and branch toggles
instant in the app.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from .backbones import DEFAULT_BACKBONE, Backbone, Weights, load_backbone
from .card import HeadMetadata, check_fits
from .checkpoint import load_head
from .classes import ClassChoice, class_matrix
from .devices import auto_device, autocast
from .errors import CheckpointError, OptionError
from .head import BranchMask, TAMEHead, parse_branch_mask
from .heads import classifier_weights_for, locate_head
from .maps import minmax_normalize, resize_and_blur, resize_maps
from .preprocessing import INPUT, Geometry, as_image_tensors, check_geometry, model_inputs
from .taps import LayerTaps

#: Values held at once while maps are made class chunk by class chunk (see ``maps_from_features``).
CHUNK_ELEMENTS = 1 << 21


class _Keep:
    """The type of :data:`KEEP`."""

    def __repr__(self) -> str:
        return "KEEP"


#: "Leave this choice as it is" for :meth:`Explanation.with_choices` (``None`` means top-1 / every branch on).
KEEP = _Keep()


@dataclass
class Explanation:
    """What one backbone forward gave, and everything needed to re-derive maps without it.

    ``maps`` are (B, K, H, W) in [0, 1] at the model input's size, for ``classes`` (B, K).
    ``original_sizes`` and ``geometry`` let :meth:`map_at_original` put a map back onto the picture.
    """

    inputs: torch.Tensor  # (B, 3, H, W) raw [0, 1] model inputs
    logits: torch.Tensor  # (B, num_classes)
    classes: torch.Tensor  # (B, K) long
    maps: torch.Tensor  # (B, K, H, W) in [0, 1]
    branch_features: list[torch.Tensor]  # per branch (B, C_i, h_i, w_i) at its own size: the class-independent part
    explainer: "Explainer" = field(repr=False)
    branch_mask: tuple[bool, ...] | None = None
    geometry: str = "full"
    original_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.float().softmax(dim=-1)

    @property
    def class_probs(self) -> torch.Tensor:
        """Probability of each explained class, (B, K)."""
        return self.probs.gather(1, self.classes)

    def top_k(self, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Per image, the ``k`` most probable classes as (index, name, probability)."""
        values, indices = self.probs.topk(min(k, self.logits.shape[1]), dim=1)
        names = self.explainer.backbone.class_names
        return [
            [(int(i), names[int(i)], float(p)) for i, p in zip(row_i.tolist(), row_p.tolist())]
            for row_i, row_p in zip(indices.cpu(), values.cpu())
        ]

    def with_choices(
        self, classes: ClassChoice | _Keep = KEEP, branch_mask: BranchMask | None | _Keep = KEEP
    ) -> "Explanation":
        """The same images for other classes and/or another branch mask in one fuse: the head's fuser
        only, no backbone forward. A choice left at :data:`KEEP` stays; with both kept, this explanation."""
        if classes is KEEP and branch_mask is KEEP:
            return self
        explainer = self.explainer
        chosen = self.classes if classes is KEEP else class_matrix(classes, self.logits, explainer.backbone.class_index)
        mask = self.branch_mask if branch_mask is KEEP else explainer.parse_branch_mask(branch_mask)
        maps = explainer.maps_from_features(self.branch_features, chosen, mask, self.inputs.shape[-2:])
        return replace(self, classes=chosen, maps=maps, branch_mask=mask)

    def with_classes(self, classes: ClassChoice) -> "Explanation":
        """The same images explained for other classes: the head's fuser only, no backbone forward."""
        return self.with_choices(classes=classes)

    def with_branches(self, branch_mask: BranchMask | None) -> "Explanation":
        """The same images with some branches switched off (``False``): the fuser only."""
        return self.with_choices(branch_mask=branch_mask)

    def select_images(self, rows: int | Sequence[int]) -> "Explanation":
        """The explanation of some of the images: one index (a batch of one) or several, in that order."""
        count = self.inputs.shape[0]
        if isinstance(rows, numbers.Integral) and not isinstance(rows, bool):
            row = _checked_index(rows, count, "image") % count
            pick: slice | list[int] = slice(row, row + 1)  # a view: no copy of the batch's tensors
            positions = [row]
        else:
            positions = [_checked_index(row, count, "image") % count for row in rows]
            pick = positions
        return replace(
            self,
            inputs=self.inputs[pick],
            logits=self.logits[pick],
            classes=self.classes[pick],
            maps=self.maps[pick],
            branch_features=[output[pick] for output in self.branch_features],
            original_sizes=[self.original_sizes[row] for row in positions] if self.original_sizes else [],
        )

    def branch_terms(self) -> torch.Tensor:
        """Each branch's signed term of the explained classes' maps (before the bias is added and the maps
        are scaled), from the head at the model input's size: (B, K, branches, H, W)."""
        with torch.no_grad():
            terms = self.explainer.head.branch_contributions(self.branch_features, self.classes)
            return resize_maps(terms, self.inputs.shape[-2:])

    def branch_maps(self) -> torch.Tensor:
        """Each branch's own contribution to the explained classes' maps, (B, K, branches, H, W) in [0, 1]."""
        return minmax_normalize(self.branch_terms())

    def map_at_original(self, index: int = 0, k: int = 0) -> np.ndarray:
        """Map ``k`` of image ``index`` as float32 (H, W) at the original picture's size (see
        :meth:`~tame_core.preprocessing.Preprocess.map_on_picture`); the model input's size for inputs."""
        saliency = self.maps[_checked_index(index, self.maps.shape[0], "image"), _checked_index(k, self.maps.shape[1], "class")]
        if not self.original_sizes:
            return saliency.float().cpu().numpy()
        height, width = self.original_sizes[index]
        return self.explainer.backbone.preprocess.map_on_picture(saliency, height, width, self.geometry)


def _checked_index(index: Any, count: int, what: str) -> int:
    """``index`` as a position among ``count`` (negative counts from the end), or one OptionError line."""
    if not isinstance(index, numbers.Integral) or isinstance(index, bool) or not -count <= int(index) < count:
        raise OptionError(f"{what} index {index!r} is out of range: this explanation has {count} {what}(s), 0 to {count - 1}")
    return int(index)


class Explainer:
    """A frozen backbone, the layers it is tapped at, and a trained head."""

    def __init__(
        self,
        backbone: Backbone,
        head: TAMEHead,
        layers: Sequence[str] | None = None,
        metadata: HeadMetadata | None = None,
        amp: bool = False,
    ) -> None:
        self.backbone = backbone
        self.layers = list(layers or (metadata.layers if metadata else backbone.default_layers))
        self.head = head.to(backbone.device).eval()
        self.metadata = metadata
        self.amp = amp
        self.map_blur = metadata.map_blur if metadata is not None else 0.0  # the card's (see HeadMetadata.map_blur)
        if metadata is not None:
            check_fits(metadata, backbone, self.layers, head.channels)
        elif head.num_classes != backbone.num_classes:
            raise CheckpointError(f"head has {head.num_classes} classes, backbone {backbone.name!r} has {backbone.num_classes}")
        self._taps = LayerTaps(backbone, self.layers)  # resolves names now: unknown layers fail early

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        head: str | os.PathLike | None = None,
        backbone: str | Backbone | None = None,
        device: torch.device | str | None = None,
        revision: str | None = None,
        amp: bool = False,
        weights: Weights | None = None,
        class_names: Sequence[str] | None = None,
        preprocess: dict[str, Any] | None = None,
    ) -> "Explainer":
        """Load a head (bundled by default, a local ``.safetensors``, or a Hub repo id) and its classifier.

        The head's card names everything else: the architecture (unless ``backbone`` is given: a name, or a
        :class:`Backbone` such as :func:`~tame_core.backbones.wrap_classifier` makes), the classifier's
        weights (``weights=None``: pretrained, or the fine-tune's file when it lies beside the head; a file
        given is checked against the card's SHA-256), its class names and its preprocessing.
        ``class_names`` and ``preprocess`` (``input_size``, ``mean``, ``std``) override the card's.
        """
        device = torch.device(device) if device is not None else auto_device()
        backbone_name = backbone.name if isinstance(backbone, Backbone) else backbone
        path = locate_head(head, backbone_name or DEFAULT_BACKBONE, revision)
        tame_head, metadata = load_head(path, device=device)
        if isinstance(backbone, Backbone):
            net = backbone.to(device)
        else:
            net = load_backbone(
                backbone or metadata.backbone,
                weights=classifier_weights_for(metadata, weights, path),
                device=device,
                class_names=class_names if class_names is not None else metadata.class_names,
                preprocess={**metadata.preprocessing, **(preprocess or {})} or None,
            )
        return cls(net, tame_head, metadata.layers, metadata, amp=amp)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # --- the pipeline -----------------------------------------------------------------------------
    def features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone forward: (logits, head branch features). ``inputs`` are raw [0, 1] images."""
        with torch.no_grad():
            with self._taps, autocast(self.device, self.amp):
                logits = self.backbone(inputs)
            return logits.float(), self.head.branch_outputs([f.float() for f in self._taps.features])

    def maps_from_features(
        self,
        branch_features: Sequence[torch.Tensor],
        classes: torch.Tensor,
        branch_mask: Sequence[bool] | None,
        size: Sequence[int],
    ) -> torch.Tensor:
        """[0, 1] maps (B, K, H, W) at ``size`` for per-image ``classes`` (B, K): fuser, resize, the card's blur, min-max.

        Classes go through in chunks whose working maps hold about :data:`CHUNK_ELEMENTS` values, so
        asking for every class costs the memory of the maps themselves and little more.
        """
        batch, count = classes.shape
        step = max(1, CHUNK_ELEMENTS // max(1, batch * int(size[0]) * int(size[1])))
        with torch.no_grad():
            if count <= step:
                return self._finish(self.head.fuse(branch_features, classes, branch_mask), size)
            maps = torch.empty(batch, count, int(size[0]), int(size[1]), device=classes.device)
            for start in range(0, count, step):
                part = classes[:, start : start + step]
                maps[:, start : start + step] = self._finish(self.head.fuse(branch_features, part, branch_mask), size)
            return maps

    def _finish(self, fused: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Fused maps to [0, 1] maps at ``size``: bilinear resize, the card's blur, min-max."""
        return minmax_normalize(resize_and_blur(fused, size, self.map_blur))

    def parse_branch_mask(self, branch_mask: BranchMask | None) -> tuple[bool, ...] | None:
        """``branch_mask`` as one flag per branch of this head (:func:`~tame_core.head.parse_branch_mask`,
        its messages naming the tapped layers)."""
        return parse_branch_mask(branch_mask, self.head.num_branches, self.layers)

    def explain(
        self,
        images: Any,
        classes: ClassChoice = None,
        *,
        top_k: int = 1,
        branch_mask: BranchMask | None = None,
        geometry: Geometry | str = "full",
    ) -> Explanation:
        """Explain a batch in one backbone forward: maps for the chosen classes, and what re-derives others.

        ``images``: PIL images, numpy arrays or tensors (one or many; uint8 or [0, 1] floats), brought
        to the model's input by ``geometry`` ("full" or "crop"); with ``geometry="input"`` they are model
        inputs already, a (B, 3, H, W) float tensor in [0, 1]. ``classes``: ``None`` for the top ``top_k``
        predictions, one class (index or name) for all images, one per image, or a list of lists (B x K).
        ``branch_mask`` switches branches off (``False``), one flag per tapped layer (or a string like ``"1,0,1"``).

        Example:
            >>> explainer = Explainer.load()  # the bundled EfficientNet-Lite0 head
            >>> explanation = explainer.explain(Image.open("cat.jpg"), classes="tabby")
            >>> explanation.maps.shape  # (images, classes, height, width), in [0, 1]
            torch.Size([1, 1, 224, 224])
            >>> overlay_map = explanation.map_at_original()  # over the whole picture
        """
        mask = self.parse_branch_mask(branch_mask)
        if geometry == INPUT:
            inputs, originals, geometry = model_inputs(images, self.device), [], "full"
        else:
            check_geometry(geometry)
            tensors = as_image_tensors(images)  # pictures it has checked already (as explain_stream's) pass as they are
            originals = [tuple(t.shape[-2:]) for t in tensors]
            inputs = self.backbone.preprocess.batch(tensors, geometry, self.device)
        logits, branch_features = self.features(inputs)
        chosen = class_matrix(classes, logits, self.backbone.class_index, top_k)
        maps = self.maps_from_features(branch_features, chosen, mask, inputs.shape[-2:])
        return Explanation(inputs, logits, chosen, maps, branch_features, self, mask, geometry, originals)
