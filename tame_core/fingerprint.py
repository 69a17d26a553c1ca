"""Every SHA-256 digest the package computes, in one place: of a file, of a list of image files, and of a
head's tensors in the two formats that are recorded (neither may ever change: old records must verify).

* :func:`sha256_of` is a file's SHA-256: a head card's ``weights_sha256`` and a classifier's weights.
* :func:`files_digest` covers a resolved list of image files by path (relative to the folder that holds
  them all) and content, so renaming, adding, removing or changing an image changes it, while moving the
  whole folder (or a copy elsewhere) does not. Reading every file costs far less than the decoding that
  training and evaluation do anyway; a caller that splits the reading (DDP ranks) passes the hashes.
* :func:`safetensors_sha256` is the ``tensors_sha256`` a head card records: over each tensor's name,
  safetensors dtype, shape and raw bytes, so it can be checked from a file's header and bytes alone and can
  travel inside the file it describes. :func:`state_safetensors_sha256` is the same digest of a state dict.
* :func:`resume_tensors_digest` is the head digest a resumable training or evaluation run records (names,
  torch dtypes, shapes and values), so two heads with the same layers but other weights differ wherever they
  came from (file, Hub, memory) and a resume never mixes two runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

#: torch dtypes and their safetensors names (the names :func:`safetensors_sha256` hashes).
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def sha256_of(path: str | os.PathLike) -> str:
    """A file's SHA-256, read in 1 MiB chunks so a large weights file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """The SHA-256 of bytes already in memory: equal to :func:`sha256_of` of a file holding them."""
    return hashlib.sha256(data).hexdigest()


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


def safetensors_sha256(tensors: Iterable[tuple[str, str, Sequence[int], Any]]) -> str:
    """SHA-256 over (name, safetensors dtype, shape, raw little-endian bytes) of each tensor, in name order.

    It covers the tensors and nothing else, so it can travel inside the file it describes.
    """
    digest = hashlib.sha256()
    for name, dtype, shape, data in sorted(tensors, key=lambda item: item[0]):
        digest.update(f"{name}\0{dtype}\0{','.join(map(str, shape))}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def state_safetensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """:func:`safetensors_sha256` of contiguous CPU tensors, as :func:`~tame_core.checkpoint.save_head` records it."""
    def raw(tensor: torch.Tensor) -> bytes:
        return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()

    return safetensors_sha256((name, SAFETENSORS_DTYPES[t.dtype], tuple(t.shape), raw(t)) for name, t in state.items())


def resume_tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, torch dtypes, shapes and values (in name order), as a resumable run
    records its head."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
