"""Batched forwards shared by the comparison methods and the metrics: class vectors and scored rows.

Both layers push many images through a classifier in batches and read one class's probability and
the top-1 from each; this module sits below both, so neither reaches into the other for it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .errors import EvaluationError

#: Builds the inputs for rows ``start:stop`` of a stream of (perturbed or masked) images.
RowBuilder = Callable[[int, int], torch.Tensor]


def class_vector(classes: torch.Tensor | Sequence[int] | int, batch: int, device: torch.device) -> torch.Tensor:
    """The explained class of each image as a (B,) long tensor on ``device``."""
    tensor = torch.as_tensor(classes, device=device)
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.ndim != 1 or tensor.shape[0] != batch or tensor.is_floating_point():
        raise EvaluationError(f"classes must be one integer class per image ({batch}), got shape {tuple(tensor.shape)}")
    return tensor.long()


def default_batch_size(device: torch.device) -> int:
    """Perturbed images per forward when the caller gives none: big on accelerators, small on a CPU.

    A CPU forward is fastest per image when a batch's activations stay in cache: Lite0 at 224 px on
    this project's 2-core machine (32 MiB L3) took 12-22 ms per image at batch 2-4 against 29-30 at 8
    and 36-40 at 32 (``benchmarks/bench_methods.py`` shows the effect on ROAD).
    """
    return 256 if device.type == "cuda" else 4


def check_batch_size(batch_size: int | None, device: torch.device) -> int:
    if batch_size is None:
        return default_batch_size(device)
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def iter_scores(
    model: nn.Module, rows: int, build: RowBuilder, classes: torch.Tensor, batch_size: int
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Forward rows ``0..rows`` built by ``build`` in batches; yield (start, stop, class prob, top-1).

    ``classes`` (rows,) is the class whose softmax probability is read from each row.
    """
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            stop = min(rows, start + batch_size)
            logits = model(build(start, stop)).float()
            probs = logits.softmax(dim=-1)
            yield start, stop, probs.gather(1, classes[start:stop, None])[:, 0], logits.argmax(dim=-1)


def scores(
    model: nn.Module, rows: int, build: RowBuilder, classes: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of :func:`iter_scores` at once: (class probabilities (rows,), top-1 classes (rows,))."""
    chunks = list(iter_scores(model, rows, build, classes, batch_size))
    return torch.cat([c[2] for c in chunks]), torch.cat([c[3] for c in chunks])
