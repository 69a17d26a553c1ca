"""A session's finished maps and curves, and the keys they are kept under.

Compare (:mod:`.compare`) and the curves (:mod:`.curves`) explain a :class:`Subject` (model, picture,
class) and keep what they finish in the session's :class:`ResultCache`, keyed by subject, method (and
curve settings): ticking another baseline computes that baseline only, and the two pages share the maps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

from ..explainer import Explanation
from ..metrics.curves import Baseline, fills_text
from .models import LoadedModel


class ResultCache:
    """A session's finished maps and curves, least recently used dropped first (thread-safe)."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True, eq=False)
class Subject:
    """What Compare and the curves explain: a model, a picture (by content hash) and one class of it."""

    model: LoadedModel
    digest: str
    explanation: Explanation  # the picture explained for the class (one image, first class)

    @property
    def class_index(self) -> int:
        return int(self.explanation.classes[0, 0])

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.explanation.inputs.shape[-2]), int(self.explanation.inputs.shape[-1])

    def key(self, *parts: Hashable) -> tuple:
        """A cache key for a result about this subject."""
        return (self.model.key, self.digest, self.class_index, *parts)


def map_key(subject: Subject, method: str) -> tuple:
    """The key of ``method``'s map of the subject."""
    return subject.key("map", method)


def curve_key(subject: Subject, method: str, steps: int, baseline: Baseline) -> tuple:
    """The key of ``method``'s deletion and insertion curves at ``steps`` steps onto ``baseline``."""
    return subject.key("curve", method, int(steps), fills_text(baseline))


def missing(subject: Subject, methods: Sequence[str], cache: ResultCache, *curve: Hashable) -> list[str]:
    """Methods whose map (or, given ``steps, baseline``, whose curves) are not in the cache yet."""
    if curve:
        return [m for m in methods if cache.get(curve_key(subject, m, *curve)) is None]
    return [m for m in methods if cache.get(map_key(subject, m)) is None]
