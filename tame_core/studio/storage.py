"""Where the app keeps its files, and which server folders its users may name.

The app is one server process shared by every browser that opens it, so nothing one session writes may
land where another session reads or writes. Each session gets a :class:`SessionFolder` of its own under
the studio folder (``$TAME_STUDIO_DIR``, default ``<temp>/tame-studio``): trained heads (kept), and
unpacked zips and evaluation states (removed when the session ends).

Paths typed into the app (a head file, a training or evaluation folder) are read by the server, not the
browser. A deployment confines them with ``TAME_ALLOWED_ROOTS`` (folders separated by ``os.pathsep``;
as an environment variable or a root-level key of ``.streamlit/secrets.toml``): :func:`server_path`
refuses anything outside them. Unset, the app is single-user and any path is allowed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

from ..errors import AccessError

STUDIO_DIR_ENV = "TAME_STUDIO_DIR"
ALLOWED_ROOTS_ENV = "TAME_ALLOWED_ROOTS"


def studio_dir() -> Path:
    """The folder under which every session's files live."""
    configured = os.environ.get(STUDIO_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(tempfile.gettempdir()) / "tame-studio"


class SessionFolder:
    """One browser session's files: ``heads/`` (trained heads, kept), ``uploads/`` and ``evaluations/``
    (scratch, removed when the session object is garbage-collected or the server exits)."""

    def __init__(self, root: str | os.PathLike | None = None, token: str | None = None) -> None:
        self.token = token or secrets.token_hex(8)
        self.path = Path(root if root is not None else studio_dir()) / "sessions" / self.token
        self._cleanup = weakref.finalize(self, _remove_scratch, self.path)

    @property
    def heads(self) -> Path:
        return self._made("heads")

    @property
    def uploads(self) -> Path:
        return self._made("uploads")

    @property
    def evaluations(self) -> Path:
        return self._made("evaluations")

    def cleanup(self) -> None:
        """Remove the scratch folders now (the trained heads stay)."""
        self._cleanup()

    def _made(self, name: str) -> Path:
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _remove_scratch(path: Path) -> None:
    for name in ("uploads", "evaluations"):
        shutil.rmtree(path / name, ignore_errors=True)


def allowed_roots() -> list[Path] | None:
    """The folders typed paths must lie in (resolved), or None when the deployment sets none."""
    text = os.environ.get(ALLOWED_ROOTS_ENV, "").strip()
    if not text:
        return None
    return [Path(part.strip()).expanduser().resolve() for part in text.split(os.pathsep) if part.strip()]


def server_path(text: str | os.PathLike, what: str, also: Iterable[str | os.PathLike] = ()) -> Path:
    """The path a user typed, resolved (symlinks too); outside the allowed roots (and ``also``) a one-line
    :class:`AccessError`. Nothing is read first, so a refusal does not say whether the path exists."""
    path = Path(str(text).strip()).expanduser().resolve()
    roots = allowed_roots()
    if roots is None:
        return path
    roots += [Path(extra).resolve() for extra in also]
    if not any(path == root or root in path.parents for root in roots):
        raise AccessError(f"{what} {str(text).strip()}: outside the folders this server lets the app read (see {ALLOWED_ROOTS_ENV})")
    return path
