"""Class names, and turning what a user types ("tabby", "n02123045", "281") into an index."""

from __future__ import annotations

import difflib
import numbers
from functools import lru_cache
from typing import Sequence

from .errors import ClassError


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
    return tuple(f"class {i}" for i in range(num_classes))


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
