"""Explaining a stream of pictures of mixed sizes in batches: what ``tame explain`` does with a folder.

Pictures whose model inputs share a size go through :meth:`~tame_core.explainer.Explainer.explain`
together; at most ``batch_size`` wait at any time, so a long stream never piles up in memory.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .classes import ClassName
from .errors import ClassError, ImageLoadError, OptionError, TameError
from .explainer import Explainer, Explanation
from .preprocessing import Geometry, Pictures, as_image_tensors, check_geometry


def explain_stream(
    explainer: Explainer,
    images: Iterable[Any],
    classes: ClassName | None = None,
    batch_size: int = 16,
    geometry: Geometry = "full",
) -> Iterator[tuple[int, Explanation]]:
    """Explain a stream of images with ``explainer.explain`` in batches, grouping those whose inputs share a size.

    Yields (position in the stream, one-image Explanation) as each batch completes, so not always in
    stream order; ``classes`` is ``None`` or one choice for every image. At most ``batch_size`` images
    wait at any time: when that many are waiting, the largest same-size group is explained. Each image
    is checked once, as it arrives (``explain`` takes the checked :class:`Pictures` as they are).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise OptionError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    if isinstance(classes, (list, tuple, np.ndarray)) or (isinstance(classes, torch.Tensor) and classes.ndim > 0):
        raise ClassError("explain_stream takes one class for every image (an index or a name) or None for the top-1")
    check_geometry(geometry)
    pending: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    waiting = 0
    preprocess = explainer.backbone.preprocess
    for position, image in enumerate(images):
        try:
            tensors = as_image_tensors(image)
            if len(tensors) != 1:
                raise ImageLoadError(f"explain_stream takes one image per item, got a batch of {len(tensors)}")
        except TameError as error:
            raise type(error)(f"image {position} of the stream: {error}") from None
        key = preprocess.resized_size(*tensors[0].shape[-2:], geometry)
        pending.setdefault(key, []).append((position, tensors[0]))
        waiting += 1
        if waiting >= batch_size:
            largest = max(pending, key=lambda size: len(pending[size]))
            group = pending.pop(largest)
            waiting -= len(group)
            yield from _explain_group(explainer, group, classes, geometry)
    for group in pending.values():
        yield from _explain_group(explainer, group, classes, geometry)


def _explain_group(
    explainer: Explainer, group: list[tuple[int, torch.Tensor]], classes: ClassName | None, geometry: Geometry
) -> Iterator[tuple[int, Explanation]]:
    positions = [position for position, _ in group]
    batch = explainer.explain(Pictures(tensor for _, tensor in group), classes=classes, geometry=geometry)
    for row, position in enumerate(positions):
        yield position, batch.select_images(row)
