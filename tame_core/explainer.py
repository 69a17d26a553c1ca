"""One-pass explanations: backbone -> layer taps -> head -> maps.

An :class:`Explainer` runs the frozen backbone once per batch, keeping the logits and the head's
branch features. Maps for any class and any set of switched-off branches then need only the fuser
(a matrix product over the cached features): that is what makes class switches and branch toggles
instant in the app.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .backbones import DEFAULT_BACKBONE, Backbone, Weights, load_backbone
from .checkpoint import HeadMetadata, check_fits, load_head, paths_for
from .errors import CheckpointError, ClassError, ImageLoadError, LayerError, OptionError, TameError
from .head import TAMEHead
from .maps import minmax_normalize, resize_maps
from .preprocessing import Geometry, as_image_tensors, check_geometry
from .taps import LayerTaps

#: Where the bundled heads live (committed safetensors + JSON cards).
CHECKPOINT_DIR = Path(os.environ.get("TAME_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))

#: The head each backbone explains with when the user names none.
BUNDLED_HEADS = {"efficientnet_lite0": "efficientnet_lite0"}

#: Values held at once while maps are made class chunk by class chunk (see ``maps_from_features``).
CHUNK_ELEMENTS = 1 << 21

ClassSpec = Any  # None | int | str | sequence of those (one per image) | (B, K) nested sequence | tensor


def bundled_head_path(backbone_name: str) -> Path:
    if backbone_name not in BUNDLED_HEADS:
        raise CheckpointError(
            f"no bundled head for backbone {backbone_name!r}; pass a head (.safetensors path or Hub repo id), "
            "or train one with `tame train`"
        )
    return CHECKPOINT_DIR / f"{BUNDLED_HEADS[backbone_name]}.safetensors"


def auto_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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

    def with_classes(self, classes: ClassSpec) -> "Explanation":
        """The same images explained for other classes: the head's fuser only, no backbone forward."""
        chosen = self.explainer.class_tensor(classes, self.logits)
        maps = self.explainer.maps_from_features(self.branch_features, chosen, self.branch_mask, self.inputs.shape[-2:])
        return replace(self, classes=chosen, maps=maps)

    def with_branches(self, branch_mask: Sequence[bool] | None) -> "Explanation":
        """The same images with some branches switched off (``False``): the fuser only."""
        mask = self.explainer._checked_mask(branch_mask)
        maps = self.explainer.maps_from_features(self.branch_features, self.classes, mask, self.inputs.shape[-2:])
        return replace(self, maps=maps, branch_mask=mask)

    def branch_maps(self) -> torch.Tensor:
        """Each branch's own contribution to the explained classes' maps, (B, K, branches, H, W) in [0, 1]."""
        head = self.explainer.head
        with torch.no_grad():
            terms = head.branch_contributions(self.branch_features, self.classes)
            return minmax_normalize(resize_maps(terms, self.inputs.shape[-2:]))

    def map_at_original(self, index: int = 0, k: int = 0) -> np.ndarray:
        """Map ``k`` of image ``index`` as float32 (H, W) at the original picture's size.

        In ``"full"`` geometry the map covers the whole picture; in ``"crop"`` it covers the centre
        crop the classifier saw, and the rest of the picture is 0.
        """
        saliency = self.maps[index, k]
        if not self.original_sizes:
            return saliency.float().cpu().numpy()
        height, width = self.original_sizes[index]
        if self.geometry == "full":
            return resize_maps(saliency, (height, width)).clamp_(0, 1).float().cpu().numpy()
        preprocess = self.explainer.backbone.preprocess
        top, left, bottom, right = preprocess.crop_box(height, width, "crop")
        canvas = np.zeros((height, width), dtype=np.float32)
        y0, x0 = max(0, round(top)), max(0, round(left))
        y1, x1 = min(height, round(bottom)), min(width, round(right))
        patch = resize_maps(saliency, (round(bottom) - round(top), round(right) - round(left))).float().cpu().numpy()
        canvas[y0:y1, x0:x1] = patch[y0 - round(top) : y1 - round(top), x0 - round(left) : x1 - round(left)]
        return np.clip(canvas, 0, 1)


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
        weights: Weights = "pretrained",
    ) -> "Explainer":
        """Load a head (bundled by default, a local ``.safetensors``, or a Hub repo id) and its backbone.

        Without ``backbone`` the head's card names it; without ``head`` the backbone's bundled head is used.
        ``weights`` are the backbone's (see :func:`~tame_core.backbones.load_backbone`).
        """
        device = torch.device(device) if device is not None else auto_device()
        backbone_name = backbone.name if isinstance(backbone, Backbone) else backbone
        path = locate_head(head, backbone_name or DEFAULT_BACKBONE, revision)
        tame_head, metadata = load_head(path, device=device)
        if isinstance(backbone, Backbone):
            net = backbone.to(device)
        else:
            net = load_backbone(backbone or metadata.backbone, weights=weights, device=device)
        return cls(net, tame_head, metadata.layers, metadata, amp=amp)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # --- the pipeline -----------------------------------------------------------------------------
    def features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone forward: (logits, head branch features). ``inputs`` are raw [0, 1] images."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)
            if self.amp
            else contextlib.nullcontext()
        )
        with torch.no_grad():
            with self._taps, autocast:
                logits = self.backbone(inputs)
            return logits.float(), self.head.branch_outputs([f.float() for f in self._taps.features])

    def maps_from_features(
        self,
        branch_features: Sequence[torch.Tensor],
        classes: torch.Tensor,
        branch_mask: Sequence[bool] | None,
        size: Sequence[int],
    ) -> torch.Tensor:
        """[0, 1] maps (B, K, H, W) at ``size`` for per-image ``classes`` (B, K): fuser, resize, min-max.

        Classes go through in chunks whose working maps hold about :data:`CHUNK_ELEMENTS` values, so
        asking for every class costs the memory of the maps themselves and little more.
        """
        batch, count = classes.shape
        step = max(1, CHUNK_ELEMENTS // max(1, batch * int(size[0]) * int(size[1])))
        with torch.no_grad():
            if count <= step:
                return minmax_normalize(resize_maps(self.head.fuse(branch_features, classes, branch_mask), size))
            maps = torch.empty(batch, count, int(size[0]), int(size[1]), device=classes.device)
            for start in range(0, count, step):
                part = classes[:, start : start + step]
                maps[:, start : start + step] = minmax_normalize(resize_maps(self.head.fuse(branch_features, part, branch_mask), size))
            return maps

    def class_tensor(self, classes: ClassSpec, logits: torch.Tensor, top_k: int = 1) -> torch.Tensor:
        """Resolve a user's class choice into a (B, K) long tensor on the device."""
        batch, count = logits.shape[0], self.backbone.num_classes
        if classes is None:
            if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= count:
                raise ClassError(f"top_k must be a whole number from 1 to {count}, got {top_k!r}")
            return logits.topk(int(top_k), dim=1).indices
        if isinstance(classes, np.ndarray):  # integer arrays act as tensors, others (names) as lists
            classes = torch.from_numpy(np.ascontiguousarray(classes)) if classes.dtype.kind in "iu" else classes.tolist()
        if isinstance(classes, torch.Tensor):
            if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool or classes.ndim > 2:
                raise ClassError(
                    f"a class tensor holds whole-number indices, (B,) or (B, K); got {classes.dtype} of shape {tuple(classes.shape)}"
                )
            chosen = classes.to(self.device, torch.long)
            if chosen.ndim == 0:
                chosen = chosen.expand(batch)
        elif not isinstance(classes, (list, tuple)):  # one class for every image; class_index refuses floats and the like
            chosen = torch.full((batch,), self.backbone.class_index(_scalar(classes)), dtype=torch.long)
        else:
            rows = list(classes)
            if len(rows) != batch:
                raise ClassError(f"got {len(rows)} class choices for {batch} images (give one per image, or one for all)")
            if not any(isinstance(r, (list, tuple, np.ndarray, torch.Tensor)) for r in rows):
                chosen = torch.tensor([self.backbone.class_index(_scalar(r)) for r in rows])
            else:
                picked = [[self.backbone.class_index(_scalar(c)) for c in _as_row(row)] for row in rows]
                if len({len(row) for row in picked}) > 1:
                    raise ClassError(f"give every image the same number of classes, got {[len(row) for row in picked]}")
                chosen = torch.tensor(picked, dtype=torch.long)
        chosen = chosen.to(self.device)
        if chosen.ndim == 1:
            chosen = chosen[:, None]
        if chosen.shape[0] != batch:
            raise ClassError(f"class tensor has {chosen.shape[0]} rows for {batch} images")
        if chosen.shape[1] == 0:
            raise ClassError("no classes chosen: give at least one class per image")
        if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= self.backbone.num_classes):
            raise ClassError(f"class indices must be in 0..{self.backbone.num_classes - 1}")
        return chosen

    def _checked_mask(self, branch_mask: Sequence[bool] | torch.Tensor | None) -> tuple[bool, ...] | None:
        """``branch_mask`` as one on/off flag per branch (tapped layer), or a LayerError saying what is wrong."""
        if branch_mask is None:
            return None
        if isinstance(branch_mask, (torch.Tensor, np.ndarray)):
            flags = np.asarray(branch_mask.detach().cpu() if isinstance(branch_mask, torch.Tensor) else branch_mask).ravel().tolist()
        elif isinstance(branch_mask, (list, tuple)):
            flags = list(branch_mask)
        else:
            raise LayerError(f"branch mask must be a list of True/False flags, one per branch, got {branch_mask!r}")
        branches = self.head.num_branches
        if len(flags) != branches:
            raise LayerError(
                f"branch mask has {len(flags)} flags but the head has {branches} branches ({', '.join(self.layers)})"
            )
        wrong = [flag for flag in flags if not isinstance(flag, (bool, np.bool_, numbers.Integral)) or flag not in (0, 1)]
        if wrong:
            raise LayerError(f"branch mask flags must be True/False (or 1/0), got {wrong[0]!r}")
        return tuple(bool(flag) for flag in flags)

    def explain(
        self,
        images: Any,
        classes: ClassSpec = None,
        top_k: int = 1,
        branch_mask: Sequence[bool] | None = None,
        geometry: Geometry = "full",
    ) -> Explanation:
        """Explain a batch: PIL images, numpy arrays or tensors (one or many; uint8 or [0, 1] floats).

        ``classes``: ``None`` for the top ``top_k`` predictions, one class (index or name) for all
        images, one per image, or a list of lists (B x K).
        """
        tensors = as_image_tensors(images)
        originals = [tuple(t.shape[-2:]) for t in tensors]
        inputs = self.backbone.preprocess.batch(tensors, geometry, self.device)
        explanation = self.explain_inputs(inputs, classes, top_k, branch_mask)
        return replace(explanation, geometry=geometry, original_sizes=originals)

    def explain_inputs(
        self,
        inputs: torch.Tensor,
        classes: ClassSpec = None,
        top_k: int = 1,
        branch_mask: Sequence[bool] | None = None,
    ) -> Explanation:
        """Explain model-ready raw [0, 1] inputs (B, 3, H, W) already on the device."""
        mask = self._checked_mask(branch_mask)
        logits, branch_features = self.features(inputs)
        chosen = self.class_tensor(classes, logits, top_k)
        maps = self.maps_from_features(branch_features, chosen, mask, inputs.shape[-2:])
        return Explanation(inputs, logits, chosen, maps, branch_features, self, mask)

    def explain_many(
        self,
        images: Iterable[Any],
        classes: ClassSpec = None,
        batch_size: int = 16,
        geometry: Geometry = "full",
    ) -> Iterator[tuple[int, Explanation]]:
        """Explain a stream of images in batches, grouping those whose inputs share a size.

        Yields (position in the stream, one-image Explanation) as each batch completes, so not always in
        stream order; ``classes`` is ``None`` or one choice for every image. At most ``batch_size`` images
        wait at any time: when that many are waiting, the largest same-size group is explained.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise OptionError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        if isinstance(classes, (list, tuple, np.ndarray)) or (isinstance(classes, torch.Tensor) and classes.ndim > 0):
            raise ClassError("explain_many takes one class for every image (an index or a name) or None for the top-1")
        check_geometry(geometry)
        pending: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        waiting = 0
        preprocess = self.backbone.preprocess
        for position, image in enumerate(images):
            try:
                tensors = as_image_tensors(image)
                if len(tensors) != 1:
                    raise ImageLoadError(f"explain_many takes one image per item, got a batch of {len(tensors)}")
            except TameError as error:
                raise type(error)(f"image {position} of the stream: {error}") from None
            key = preprocess.resized_size(*tensors[0].shape[-2:], geometry)
            pending.setdefault(key, []).append((position, tensors[0]))
            waiting += 1
            if waiting >= batch_size:
                largest = max(pending, key=lambda size: len(pending[size]))
                group = pending.pop(largest)
                waiting -= len(group)
                yield from self._explain_group(group, classes, geometry)
        for group in pending.values():
            yield from self._explain_group(group, classes, geometry)

    def _explain_group(
        self, group: list[tuple[int, torch.Tensor]], classes: ClassSpec, geometry: Geometry
    ) -> Iterator[tuple[int, Explanation]]:
        positions = [position for position, _ in group]
        batch = self.explain([tensor for _, tensor in group], classes=classes, geometry=geometry)
        for row, position in enumerate(positions):
            yield position, _select(batch, row)


def locate_head(source: str | os.PathLike | None, backbone_name: str, revision: str | None = None) -> Path:
    """A local path for ``source``: bundled (None or "bundled"), an existing file, or a Hub repo id."""
    if source is None or str(source) == "bundled":
        return bundled_head_path(backbone_name)
    path = Path(source)
    tensor_path = paths_for(path)[0] if path.name else path
    if path.suffix in (".safetensors", ".json") or path.exists() or tensor_path.exists():
        if not tensor_path.is_file():
            raise CheckpointError(f"no head checkpoint at {tensor_path}")
        return tensor_path
    from .hub import is_repo_id, pull_head

    if is_repo_id(str(source)):
        return pull_head(str(source), revision=revision)
    raise CheckpointError(f"head {str(source)!r} is neither a local .safetensors file nor a Hub repo id (owner/name)")


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        return int(value)
    return int(value) if isinstance(value, np.integer) else value


def _as_row(row: Any) -> list[Any]:
    """One image's classes: a list, array or tensor of them, or a single class."""
    if isinstance(row, torch.Tensor):
        return row.flatten().tolist() if not row.is_floating_point() else [row]
    return list(row) if isinstance(row, (list, tuple, np.ndarray)) else [row]


def _select(explanation: Explanation, row: int) -> Explanation:
    pick = slice(row, row + 1)
    return replace(
        explanation,
        inputs=explanation.inputs[pick],
        logits=explanation.logits[pick],
        classes=explanation.classes[pick],
        maps=explanation.maps[pick],
        branch_features=[output[pick] for output in explanation.branch_features],
        original_sizes=explanation.original_sizes[row : row + 1],
    )
