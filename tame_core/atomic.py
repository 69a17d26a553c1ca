"""Files that are written whole or not at all, by one writer at a time, and write failures in one line.

Every file tame_core writes for later (heads, cards, training and evaluation states, results,
uploaded heads) goes through :func:`atomic_path`: the bytes go to a temporary file of this writer's
own beside the target, which then replaces the target in one rename. Three guards live here, for every
writer:

* :func:`write_failures` turns a full disk, a missing permission or a read-only folder (an ``OSError``,
  or PyTorch's ``RuntimeError`` from a failed ``torch.save``) into one :class:`OutputError` line that
  says what was kept: the previous file, untouched, or nothing;
* :class:`OutputLock` is a lock file beside an output (``<out>.lock``) that a second run on the same
  output sees and refuses in one line; it goes when its run ends, and a lock whose process is dead is
  taken over (the operating system drops a dead process's ``flock``);
* new files get the permissions the umask gives (``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError

try:  # POSIX; elsewhere the lock falls back to the recorded process id alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: PyTorch's words for a write that failed underneath ``torch.save`` (it raises RuntimeError, not OSError).
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "unexpected pos", "file write failed", "No space left")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once, at import: os.umask can only be read by setting it, which is not safe once threads run.
_UMASK = _umask()


@contextlib.contextmanager
def write_failures(target: str | os.PathLike, kept: str | None = None) -> Iterator[None]:
    """Turn a failed write of ``target`` into one :class:`OutputError` line saying what was kept.

    ``kept`` overrides the default ("the previous <name> is kept" when ``target`` exists, else "nothing
    was written").
    """
    try:
        yield
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise OutputError(_failure(Path(target), error.strerror or str(error), kept)) from None
    except RuntimeError as error:
        text = str(error)
        if not any(words in text for words in _TORCH_WRITE_FAILURES):
            raise
        reason = "No space left on device" if "space" in text.lower() or "unexpected pos" in text else "write failed"
        raise OutputError(_failure(Path(target), reason, kept)) from None


def _failure(target: Path, reason: str, kept: str | None) -> str:
    if kept is None:
        kept = f"the previous {target.name} is kept" if target.exists() else "nothing was written"
    return f"{target}: cannot write ({' '.join(reason.split())}); {kept}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False, kept: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    ``durable`` also flushes the bytes to disk before the rename (for states a run resumes from). A
    failed write is one :class:`OutputError` line (see :func:`write_failures`); the target is untouched.
    """
    target = Path(path)
    with write_failures(target, kept):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        temporary = Path(name)
        try:
            yield temporary
            os.chmod(temporary, 0o666 & ~_UMASK)  # what open() would give a new file
            if durable:
                with open(temporary, "rb") as written:
                    os.fsync(written.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def write_atomically(path: str | os.PathLike, data: str | bytes, durable: bool = False, kept: str | None = None) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, durable, kept) as temporary:
        if isinstance(data, str):
            temporary.write_text(data, encoding="utf-8")
        else:
            temporary.write_bytes(data)
    return Path(path)


class OutputLock:
    """``<output>.lock``: while one run holds it, a second run on the same output is refused in one line.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. The file records the holder's process
    id and host for the message. A lock left by a dead process is taken over.
    """

    def __init__(self, output: str | os.PathLike, what: str = "output") -> None:
        output = Path(output)
        self.output = output
        self.path = output.with_name(output.name + ".lock")
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        if self._fd is not None:
            return self
        with write_failures(self.path, kept="nothing was written"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(20):  # another run may remove the file between our open and our lock: retry
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                if not self._lock(fd):
                    os.close(fd)
                    raise OutputError(
                        f"{self.what} {self.output} is being written by another run ({self._holder()}); "
                        "wait for it to finish or choose another output"
                    )
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                    self._fd = fd
                    return self
                os.close(fd)
        raise OutputError(f"{self.what} {self.output}: cannot take its lock file {self.path.name}; try again")

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                return False
        pid = _recorded_pid(fd)  # pragma: no cover - no flock: trust a recorded, living process id
        return pid is None or pid == os.getpid() or not _alive(pid)

    def _holder(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            text = []
        return f"process {text[0]} on {text[1]}" if len(text) >= 2 else "another process"

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: nobody can take a lock on a file about to vanish
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _recorded_pid(fd: int) -> int | None:  # pragma: no cover - used without flock only
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:  # pragma: no cover - used without flock only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
