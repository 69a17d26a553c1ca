"""Files that are written whole or not at all: a reader, a crash or a second writer never sees half a file.

Every file tame_core writes for later (heads, cards, training and evaluation states, results,
uploaded heads) goes through :func:`atomic_path`: the bytes go to a temporary file of this writer's
own beside the target, which then replaces the target in one rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    ``durable`` also flushes the bytes to disk before the rename (for states a run resumes from).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        if durable:
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike, data: str | bytes, durable: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, durable) as temporary:
        if isinstance(data, str):
            temporary.write_text(data, encoding="utf-8")
        else:
            temporary.write_bytes(data)
    return Path(path)
