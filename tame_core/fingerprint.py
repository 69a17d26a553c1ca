"""Digests that say which images and which head a resumable run used, so a resume never mixes two runs.

A training or evaluation state records them; a resume recomputes them and refuses a state whose
digests differ. Both are SHA-256 hex strings:

* :func:`files_digest` covers a resolved list of image files by path (relative to the folder that holds
  them all) and content, so renaming, adding, removing or changing an image changes it, while moving the
  whole folder (or a copy elsewhere) does not. Reading every file costs far less than the decoding that
  training and evaluation do anyway; a caller that splits the reading (DDP ranks) passes the hashes.
* :func:`tensors_digest` covers a head's tensors (names, dtypes, shapes and values), so two heads with
  the same layers but other weights differ wherever they came from (file, Hub, memory).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import sha256_of


def file_digest(path: str | os.PathLike) -> str:
    """A file's SHA-256, or a marker for a file that cannot be read (the run skips it with its own message)."""
    try:
        return sha256_of(path)
    except OSError as error:
        return f"unreadable: {error.strerror or type(error).__name__}"


def files_digest(files: Sequence[str | os.PathLike], contents: Sequence[str] | None = None) -> str:
    """SHA-256 of the sorted (relative path, content SHA-256) list of ``files``; ``contents`` are the files'
    own SHA-256s when the caller has them."""
    paths = [Path(file).resolve() for file in files]
    if contents is None:
        contents = [file_digest(path) for path in paths]
    if len(contents) != len(paths):
        raise ValueError(f"{len(paths)} files but {len(contents)} content digests")
    if not paths:
        return hashlib.sha256(b"").hexdigest()
    root = Path(os.path.commonpath([str(path.parent) for path in paths]))
    digest = hashlib.sha256()
    for name, content in sorted(zip((path.relative_to(root).as_posix() for path in paths), contents)):
        digest.update(f"{name}\t{content}\n".encode())
    return digest.hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
