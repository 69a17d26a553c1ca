"""Where the app keeps its files, and which server folders its users may name.

The app is one server process shared by every browser that opens it, so nothing one session writes may
land where another session reads or writes. Each session gets a :class:`SessionFolder` of its own under
the studio folder (``$TAME_STUDIO_DIR``, default ``<temp>/tame-studio``): trained heads (kept), and
unpacked zips and evaluation states (removed when the session ends).

Paths typed into the app (a head file, a training or evaluation folder) are read by the server, not the
browser. A deployment confines them with ``TAME_ALLOWED_ROOTS`` (folders separated by ``os.pathsep``;
as an environment variable or a root-level key of ``.streamlit/secrets.toml``): :func:`server_path`
refuses anything outside them. Unset, the app is single-user and any path is allowed. A head typed in is
checked by :func:`server_head` on the files that will really be read (``x`` -> ``x.safetensors`` and its card,
symlinks resolved); the Hub field takes only a repo id (:func:`hub_repo_id`), never a path. Messages the app
shows go through :func:`public_message`, which leaves no server path in them.

The studio folder has a total quota (``$TAME_STUDIO_QUOTA_MB``, default :data:`DEFAULT_QUOTA_MB`):
:func:`check_quota` refuses an upload or unpacked zip that would go over it, in one line.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

from ..checkpoint import paths_for
from ..errors import AccessError, OutputError
from ..hub import scrub_local_paths

#: The whole studio folder's size limit, in MB, unless ``$TAME_STUDIO_QUOTA_MB`` says otherwise.
DEFAULT_QUOTA_MB = 20_000
QUOTA_ENV = "TAME_STUDIO_QUOTA_MB"

STUDIO_DIR_ENV = "TAME_STUDIO_DIR"

#: How long a disconnected session keeps its scratch files: Streamlit's own ``server.disconnectedSessionTTL``
#: default, the time it keeps the session for a reconnect (the app passes the configured value).
DISCONNECTED_TTL_S = 120.0
ALLOWED_ROOTS_ENV = "TAME_ALLOWED_ROOTS"


def studio_dir() -> Path:
    """The folder under which every session's files live."""
    configured = os.environ.get(STUDIO_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(tempfile.gettempdir()) / "tame-studio"


class SessionFolder:
    """One browser session's files: ``heads/`` (trained heads, kept), ``uploads/``, ``uploaded-heads/`` and ``evaluations/``
    (scratch, removed once the session has been gone ``gone_after`` seconds when ``alive`` tells whether it is
    connected, and in any case when the object is garbage-collected or the server exits)."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        token: str | None = None,
        alive: Callable[[], bool] | None = None,
        gone_after: float = DISCONNECTED_TTL_S,
        janitor: "Janitor | None" = None,
    ) -> None:
        self.token = token or secrets.token_hex(8)
        self.path = Path(root if root is not None else studio_dir()) / "sessions" / self.token
        self._cleanup = weakref.finalize(self, _remove_scratch, self.path)
        if alive is not None:
            (janitor or _janitor()).watch(self, alive, gone_after)

    @property
    def heads(self) -> Path:
        return self._made("heads")

    @property
    def uploads(self) -> Path:
        return self._made("uploads")

    @property
    def uploaded_heads(self) -> Path:
        """Heads uploaded in this session (scratch: they go with the session)."""
        return self._made("uploaded-heads")

    @property
    def evaluations(self) -> Path:
        return self._made("evaluations")

    def cleanup(self) -> None:
        """Remove the scratch folders now (the trained heads stay; used again, the folder is cleaned at exit too)."""
        _remove_scratch(self.path)

    def _made(self, name: str) -> Path:
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


_SCRATCH = ("uploads", "uploaded-heads", "evaluations")

#: How often the janitor looks at the sessions that own folders.
SWEEP_INTERVAL_S = 5.0


class Janitor:
    """Removes a session folder's scratch once its session has been disconnected for ``gone_after`` seconds.

    A closed tab leaves the session object alive for a while (Streamlit keeps it for a reconnect, and the
    garbage collector frees it when it likes), so waiting for the object to be freed left uploads on disk for
    minutes. One daemon thread per process (:meth:`start`) calls :meth:`sweep`; tests call it with their own clock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._watched: dict[int, tuple[weakref.ref, Callable[[], bool], float]] = {}
        self._gone_since: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, folder: SessionFolder, alive: Callable[[], bool], gone_after: float) -> None:
        with self._lock:
            self._watched[id(folder)] = (weakref.ref(folder), alive, gone_after)

    def sweep(self) -> list[Path]:
        """Clean every folder whose session has been gone long enough; the folders cleaned."""
        now, cleaned = self._clock(), []
        with self._lock:
            watched = list(self._watched.items())
        for key, (ref, alive, gone_after) in watched:
            folder = ref()
            try:
                connected = folder is not None and bool(alive())
            except Exception:  # noqa: BLE001 - a broken probe counts as gone, like the jobs' watchdog
                connected = False
            if connected:
                self._gone_since.pop(key, None)
                continue
            since = self._gone_since.setdefault(key, now)
            if folder is None or now - since >= gone_after:
                if folder is not None:
                    folder.cleanup()
                    cleaned.append(folder.path)
                with self._lock:
                    self._watched.pop(key, None)
                self._gone_since.pop(key, None)
        return cleaned

    def start(self) -> "Janitor":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tame-session-janitor", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            time.sleep(SWEEP_INTERVAL_S)
            self.sweep()


_JANITOR: Janitor | None = None


def _janitor() -> Janitor:
    """The process's janitor, its thread started on first use."""
    global _JANITOR
    if _JANITOR is None:
        _JANITOR = Janitor()
    return _JANITOR.start()


def _remove_scratch(path: Path) -> None:
    for name in _SCRATCH:
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


def server_head(text: str | os.PathLike, what: str = "Head", also: Iterable[str | os.PathLike] = ()) -> Path:
    """The head file a typed path really reads: ``x`` becomes ``x.safetensors``, symlinks are resolved, and
    that file and the card beside it must both lie inside the allowed roots (:func:`server_path`).

    Checking the typed text alone is not enough: ``allowed/sneaky`` may become ``sneaky.safetensors``, a link
    to a file outside. Nothing is opened and existence is not told; a refusal names only what was typed.
    """
    typed = str(text).strip()
    try:
        tensor_path = server_path(paths_for(Path(typed).expanduser())[0], what, also)
        server_path(paths_for(tensor_path)[1], what, also)
    except AccessError:
        raise AccessError(f"{what} {typed}: outside the folders this server lets the app read (see {ALLOWED_ROOTS_ENV})") from None
    return tensor_path


#: A Hub repo id: owner/name, each part letters, digits, '-', '_' or '.', starting with a letter or digit.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def hub_repo_id(text: str) -> str:
    """``text`` as a Hub repo id, or a one-line AccessError. Only the shape is checked: nothing on this
    server is looked at, so the field cannot read a server file or tell whether one exists."""
    typed = str(text).strip()
    if not _HUB_ID.match(typed) or ".." in typed or typed.endswith((".safetensors", ".json")):
        raise AccessError(f"{_short(typed)!r} is not a Hub repo id: write owner/name (a server file goes in the Local field)")
    return typed


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def public_message(text: str) -> str:
    """A message fit to show a browser: every server path in it becomes its file name."""
    return scrub_local_paths(str(text))


def quota_bytes() -> int:
    """The studio folder's size limit in bytes (``$TAME_STUDIO_QUOTA_MB``)."""
    text = os.environ.get(QUOTA_ENV, "").strip()
    try:
        megabytes = float(text) if text else DEFAULT_QUOTA_MB
    except ValueError:
        megabytes = DEFAULT_QUOTA_MB
    return int(max(megabytes, 0) * 2**20)


def used_bytes(root: str | os.PathLike | None = None) -> int:
    """Bytes held under the studio folder (links are not followed)."""
    total = 0
    for folder, _, files in os.walk(root if root is not None else studio_dir()):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed meanwhile
    return total


def check_quota(adding: int, root: str | os.PathLike | None = None) -> None:
    """Refuse, in one line, ``adding`` more bytes when the studio folder would go over its quota."""
    limit = quota_bytes()
    used = used_bytes(root)
    if used + adding > limit:
        raise OutputError(
            f"the app's storage is full ({_mb(used)} used, {_mb(adding)} more asked, quota {_mb(limit)}): "
            "forget uploads or try again later"
        )


def _mb(count: int) -> str:
    return f"{count / 2**20:.0f} MB"


def server_folder(text: str | os.PathLike, what: str = "Folder") -> Path:
    """A typed folder (:func:`server_path`) whose links, walked below it, all stay inside the allowed roots:
    the files a run reads from it are checked too, not the folder's own name alone. Unset roots: no walk."""
    folder = server_path(text, what)
    roots = allowed_roots()
    if roots is None or not folder.is_dir():
        return folder
    for parent, folders, files in os.walk(folder):  # links are not followed, only resolved
        for name in folders + files:
            entry = Path(parent) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not any(target == root or root in target.parents for root in roots):
                    shown = entry.relative_to(folder)
                    raise AccessError(
                        f"{what} {str(text).strip()}: {_short(str(shown))} links outside the folders this server lets "
                        f"the app read (see {ALLOWED_ROOTS_ENV})"
                    )
    return folder
