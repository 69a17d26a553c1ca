"""Class names, and turning what a user types ("tabby", "n02123045", "281") into an index."""

from __future__ import annotations

import difflib
import numbers
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from .errors import ClassError

#: One class: an index, or a name / WordNet id / index as text ("tabby", "n02123045", "281").
ClassName = Union[int, str]
#: What ``explain`` takes for ``classes``: ``None`` (the top predictions), one class for every image, one
#: per image, a list of lists (B x K), or an integer tensor / array of indices, (B,) or (B, K).
ClassChoice = Union[None, ClassName, Sequence[ClassName], Sequence[Sequence[ClassName]], torch.Tensor, np.ndarray]


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k names in index order (torchvision's list: short and unique)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in index order (sorted, as ImageNet folders are)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def class_names_for(num_classes: int, subset: str | None = None) -> tuple[str, ...]:
    """Names for a classifier with ``num_classes`` outputs: ImageNet's when they fit, else generic."""
    if num_classes == 1000 and subset in (None, "imagenet-1k"):
        return imagenet_class_names()
    if subset:
        try:
            from timm.data import ImageNetInfo

            info = ImageNetInfo(subset)
            if info.num_classes() == num_classes:
                return tuple(d.split(",")[0] for d in info.label_descriptions())
        except Exception:  # unknown subset: fall through to generic names
            pass
    return generic_class_names(num_classes)


def generic_class_names(num_classes: int) -> tuple[str, ...]:
    """``class 0`` ... ``class N-1``: the names of a classifier nobody named (see :func:`read_labels`)."""
    return tuple(f"class {i}" for i in range(num_classes))


#: Largest labels file read: a million names of 10 characters.
MAX_LABELS_BYTES = 16 * 2**20


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a file: one per line (blank lines at the end ignored), or a JSON list of strings.

    Names must be non-empty and distinct ignoring case (``--class NAME`` must find exactly one), so a
    wrong file is refused here in one line rather than showing wrong names later.
    """
    path = Path(path)
    if not path.is_file():
        raise ClassError(f"labels file {path.name} does not exist (or is not a regular file)")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise ClassError(f"labels file {path.name} is over {MAX_LABELS_BYTES >> 20} MB: give one class name per line")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
    except UnicodeDecodeError:
        raise ClassError(f"labels file {path.name} is not UTF-8 text: give one class name per line, or a JSON list of names") from None
    names = _json_labels(text, path) if text.lstrip().startswith("[") else text.rstrip("\r\n").splitlines()
    return checked_names(names, f"labels file {path.name}")


def _json_labels(text: str, path: Path) -> list[Any]:
    import json

    try:
        names = json.loads(text)
    except (ValueError, RecursionError):
        raise ClassError(f"labels file {path.name} starts with '[' but is not a JSON list of names") from None
    if not isinstance(names, list):
        raise ClassError(f"labels file {path.name} is not a JSON list of names")
    return names


def checked_names(names: Sequence[Any], where: str) -> tuple[str, ...]:
    """``names`` as stripped strings, each non-empty and distinct ignoring case, or a one-line ClassError."""
    if not names:
        raise ClassError(f"{where} holds no class names")
    cleaned = []
    for number, name in enumerate(names, 1):
        if not isinstance(name, str) or not name.strip():
            raise ClassError(f"{where}: name {number} is {'empty' if isinstance(name, str) else repr(name)[:40]}; every class needs a name")
        cleaned.append(" ".join(name.split()))
    seen: dict[str, int] = {}
    for number, name in enumerate(cleaned, 1):
        if name.casefold() in seen:
            raise ClassError(f"{where}: {name!r} is both name {seen[name.casefold()]} and name {number}; names must differ")
        seen[name.casefold()] = number
    return tuple(cleaned)


def resolve_class(query: int | str, class_names: Sequence[str]) -> int:
    """Index of ``query``: an index, an exact name (any case) or an ImageNet WordNet id."""
    count = len(class_names)
    if isinstance(query, bool) or not isinstance(query, (numbers.Integral, str)):
        raise ClassError(f"class must be a name or a whole-number index, got {query!r} ({type(query).__name__})")
    if isinstance(query, numbers.Integral) or (isinstance(query, str) and query.strip().lstrip("-").isdigit()):
        index = int(query)
        if not 0 <= index < count:
            raise ClassError(f"class index {index} is out of range: this classifier has {count} classes (0..{count - 1})")
        return index
    text = str(query).strip()
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if count == 1000 and text in imagenet_wnids():
        return imagenet_wnids().index(text)
    close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(class_names[lowered.index(c)]) for c in close)}?" if close else ""
    raise ClassError(f"unknown class {text!r}{hint}")


def class_matrix(
    classes: ClassChoice, logits: torch.Tensor, class_index: Callable[[Any], int], top_k: int = 1
) -> torch.Tensor:
    """A user's class choice as a (B, K) long tensor on ``logits``' device: ``None`` for the ``top_k``
    predictions, one class (index or name) for all images, one per image, or a list of lists (B x K).
    ``class_index`` turns one index or name into an index (:meth:`Backbone.class_index`)."""
    batch, count = logits.shape[0], logits.shape[1]
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
        chosen = classes.to(logits.device, torch.long)
        if chosen.ndim == 0:
            chosen = chosen.expand(batch)
    elif not isinstance(classes, (list, tuple)):  # one class for every image; class_index refuses floats and the like
        chosen = torch.full((batch,), class_index(_scalar(classes)), dtype=torch.long)
    else:
        rows = list(classes)
        if len(rows) != batch:
            raise ClassError(f"got {len(rows)} class choices for {batch} images (give one per image, or one for all)")
        if not any(isinstance(r, (list, tuple, np.ndarray, torch.Tensor)) for r in rows):
            chosen = torch.tensor([class_index(_scalar(r)) for r in rows])
        else:
            picked = [[class_index(_scalar(c)) for c in _as_row(row)] for row in rows]
            if len({len(row) for row in picked}) > 1:
                raise ClassError(f"give every image the same number of classes, got {[len(row) for row in picked]}")
            chosen = torch.tensor(picked, dtype=torch.long)
    chosen = chosen.to(logits.device)
    if chosen.ndim == 1:
        chosen = chosen[:, None]
    if chosen.shape[0] != batch:
        raise ClassError(f"class tensor has {chosen.shape[0]} rows for {batch} images")
    if chosen.shape[1] == 0:
        raise ClassError("no classes chosen: give at least one class per image")
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= count):
        raise ClassError(f"class indices must be in 0..{count - 1}")
    return chosen


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        return int(value)
    return int(value) if isinstance(value, np.integer) else value


def _as_row(row: Any) -> list[Any]:
    """One image's classes: a list, array or tensor of them, or a single class."""
    if isinstance(row, torch.Tensor):
        return row.flatten().tolist() if not row.is_floating_point() else [row]
    return list(row) if isinstance(row, (list, tuple, np.ndarray)) else [row]
