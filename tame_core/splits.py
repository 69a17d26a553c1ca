"""The project's fixed ImageNet split, shared by training (which images a head learns from) and evaluation
(which images it is measured on): class index i (sorted WordNet ids) with i % 5 == 4 is held out.

It lives apart from both so that neither imports the other to agree on which image is held out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .classes import imagenet_wnids
from .errors import TrainingError

#: Held out: the classes whose index i (sorted WordNet ids) has i % 5 == 4.
HELDOUT_EVERY, HELDOUT_REMAINDER = 5, 4
SPLITS = ("all", "train", "heldout")
_WNID = re.compile(r"n\d{8}")


def is_heldout_class(index: int) -> bool:
    """Whether ImageNet class ``index`` belongs to the project's held-out 200."""
    return index % HELDOUT_EVERY == HELDOUT_REMAINDER


def imagenet_class_of(path: Path) -> int | None:
    """The ImageNet class index a file belongs to, from a WordNet id starting its name or a parent folder's."""
    wnids = imagenet_wnids()
    for name in (path.name, *(parent.name for parent in path.parents)):
        match = _WNID.match(name)
        if match and match[0] in wnids:
            return wnids.index(match[0])
    return None


def split_files(paths: Sequence[Path], split: str) -> list[Path]:
    """``all`` the files, or the project split's ``train`` (800 classes) or ``heldout`` (200) part."""
    if split not in SPLITS:
        raise TrainingError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "all":
        return list(paths)
    chosen = []
    for path in paths:
        index = imagenet_class_of(path)
        if index is None:
            raise TrainingError(f"{path}: split {split!r} needs ImageNet WordNet ids (n01440764...) in file or folder names")
        if is_heldout_class(index) == (split == "heldout"):
            chosen.append(path)
    return chosen
