"""Reading files users hand us: regular files of bounded size, and JSON of bounded size and depth.

Two guards for every reader in tame_core:

* :func:`read_regular` reads a path only if it is a regular file (a FIFO would block forever, ``/dev/zero``
  never ends) no larger than a limit, checked on the open file before a byte is read;
* :func:`parse_json` / :func:`read_json` parse JSON with a size limit, whole numbers of at most
  :data:`MAX_INT_DIGITS` digits, and nesting of at most :data:`MAX_JSON_DEPTH` levels. Depth is measured
  without recursion, and the parser's own recursion limit becomes the same one-line error, so JSON nested
  100,000 deep is a refusal, not a ``RecursionError``.

Each takes the :class:`~tame_core.errors.TameError` subclass its caller raises (a card reader says
CheckpointError, an evaluation state EvaluationError), so messages stay those of the caller's domain.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from .errors import TameError

#: JSON files and texts tame_core reads: cards and headers are small, evaluation states can be large.
MAX_JSON_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 40


def read_regular(
    path: str | os.PathLike, max_bytes: int, error: type[TameError], label: str | None = None, noun: str = "file"
) -> bytes:
    """The bytes of ``path``: a regular file of at most ``max_bytes``, else one ``error`` line.

    The file is opened without blocking (a FIFO does not hang the open) and checked on the open handle,
    so what was checked is what is read.
    """
    label = label or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except IsADirectoryError:  # where a folder cannot be opened at all
        raise error(f"{label}: is a folder, not {'an' if noun[0] in 'aeiou' else 'a'} {noun}") from None
    except (OSError, ValueError) as failure:  # no permission, a name too long, a NUL byte in the name
        raise error(f"{label}: cannot read ({getattr(failure, 'strerror', None) or failure})") from None
    try:
        check_regular(fd, max_bytes, error, label, noun)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as failure:
            raise error(f"{label}: cannot read ({failure.strerror or failure})") from None
    if len(data) > max_bytes:  # grew while we read it
        raise error(f"{label}: {_size(len(data))} is over the {_size(max_bytes)} limit for this file")
    return data


def check_regular(fd: int, max_bytes: int, error: type[TameError], label: str, noun: str = "file") -> int:
    """The size of the open file ``fd``; one ``error`` line if it is not a regular file or is too large."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{label}: is a folder, not {'an' if noun[0] in 'aeiou' else 'a'} {noun}")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket or special file"
        raise error(f"{label}: is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise error(f"{label}: {_size(info.st_size)} is over the {_size(max_bytes)} limit for this file")
    return info.st_size


def parse_json(text: str | bytes, error: type[TameError], where: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """``text`` as JSON within the size, number and depth limits above; anything else one ``error`` line."""
    if len(text) > max_bytes:
        raise error(f"{where}: {_size(len(text))} of JSON is over the {_size(max_bytes)} limit")
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise error(f"{where}: JSON nested too deep (the limit is {MAX_JSON_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as failure:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({_short(' '.join(str(failure).split()))})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested too deep (the limit is {MAX_JSON_DEPTH} levels)")
    return value


def read_json(path: str | os.PathLike, error: type[TameError], max_bytes: int = MAX_JSON_BYTES, label: str | None = None) -> Any:
    """A JSON file read through :func:`read_regular` and :func:`parse_json`."""
    label = label or str(path)
    return parse_json(read_regular(path, max_bytes, error, label), error, label, max_bytes)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a whole number of {len(text.lstrip('-'))} digits (the limit is {MAX_INT_DIGITS})")
    return int(text)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, walked with a list rather than recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MB" if count >= 2**20 else f"{count} bytes"


def _short(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (following links), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "check_regular", "is_regular_file", "parse_json", "read_json", "read_regular"]
