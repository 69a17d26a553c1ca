"""Which model the app explains with, loaded once per process and shared safely between sessions.

A :class:`ModelChoice` is what the sidebar picks (head source, backbone, revision, device); it is
hashable, so the app caches one :class:`LoadedModel` per choice (``st.cache_resource``). A loaded
model is shared by every browser session and by background jobs, and :class:`~tame_core.taps.LayerTaps`
hooks live on the one backbone: :meth:`LoadedModel.busy` serialises everything that runs the backbone.
Work on cached features (class switches, branch toggles) needs only the head and no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..atomic import write_atomically
from ..backbones import DEFAULT_BACKBONE, read_weights
from ..classes import imagenet_class_names
from ..checkpoint import load_head
from ..errors import BackboneError, CheckpointError, TameError
from ..explainer import Explainer, Explanation
from ..heads import locate_head
from ..hub import is_repo_id, pull_head
from ..maps import blur_sigma_pixels
from .storage import check_quota, hub_repo_id, studio_dir

#: Environment variable naming a head to use instead of the bundled one (a deployment on your own model).
HEAD_ENV = "TAME_HEAD"
#: Environment variable naming the classifier weights file that head explains (a fine-tune of yours).
WEIGHTS_ENV = "TAME_WEIGHTS"

#: Largest head checkpoint accepted as an upload, in MB: the server's own upload limit
#: (.streamlit/config.toml); a ResNet-50 head is under 40 MB.
MAX_HEAD_UPLOAD_MB = 200


@dataclass(frozen=True)
class ModelChoice:
    """A head and the backbone it explains: the sidebar's selection, and the model cache's key."""

    head: str | None = None  # None: the backbone's bundled head; else a .safetensors path or a Hub repo id
    backbone: str | None = None  # None: the one the head's card names (the default for the bundled head)
    revision: str | None = None  # Hub branch, tag or commit (Hub heads only)
    device: str = "cpu"
    weights: str | None = None  # the classifier's weights file (None: what the head's card names)

    @property
    def is_hub(self) -> bool:
        return self.head is not None and is_repo_id(self.head)

    def head_file(self) -> Path | None:
        """The local checkpoint this choice reads (None for a Hub head)."""
        if self.is_hub:
            return None
        return locate_head(self.head, self.backbone or DEFAULT_BACKBONE)

    def fingerprint(self) -> tuple[int, int] | None:
        """(mtime, size) of a local head file: a retrained bundled head is picked up without a restart."""
        try:
            path = self.head_file()
            stat = path.with_suffix(".safetensors").stat() if path is not None else None
        except (CheckpointError, OSError):
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat is not None else None

    def describe(self) -> str:
        if self.head is None:
            source = "bundled head"
        elif self.is_hub:
            source = f"Hub {self.head}" + (f"@{self.revision}" if self.revision else "")
        else:
            source = Path(self.head).name
        weights = f" with weights {Path(self.weights).name}" if self.weights else ""
        return f"{source} on {self.backbone or 'its backbone'}{weights} ({self.device})"


def default_choice(device: str = "cpu") -> ModelChoice:
    """The bundled head on the embedded default backbone, unless ``$TAME_HEAD`` names another head (and
    ``$TAME_WEIGHTS`` the fine-tuned classifier it explains)."""
    return ModelChoice(head=os.environ.get(HEAD_ENV) or None, device=device, weights=os.environ.get(WEIGHTS_ENV) or None)


def available_devices() -> list[str]:
    return ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]


class LoadedModel:
    """An :class:`Explainer` plus the lock that keeps concurrent sessions' backbone runs apart."""

    def __init__(self, choice: ModelChoice, explainer: Explainer, fingerprint: tuple[int, int] | None = None) -> None:
        self.choice = choice
        self.explainer = explainer
        self.key = (choice, fingerprint)
        #: A short stable id of :attr:`key`, for widget keys and file names.
        self.tag = hashlib.sha1(repr(self.key).encode()).hexdigest()[:10]
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def busy(self) -> Iterator[Explainer]:
        """Hold the model for work that runs the backbone (taps, comparison methods, metrics)."""
        with self._lock:
            yield self.explainer

    @property
    def layers(self) -> list[str]:
        return list(self.explainer.layers)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.explainer.backbone.class_names

    @property
    def knows_imagenet(self) -> bool:
        """Whether the classifier has ImageNet's 1000 classes under their own names: only then do the
        curated ImageNet sample photos mean anything to it (a fine-tune of yours is shown on your pictures)."""
        return self.class_names == imagenet_class_names()

    def explain(self, pixels: np.ndarray | Sequence[np.ndarray]) -> Explanation:
        """Top-1 explanation of one picture (or a batch of same-size pictures) on the whole image."""
        with self.busy() as explainer:
            return explainer.explain(pixels, geometry="full")

    @property
    def unfinished_note(self) -> str | None:
        """One line when the head's card says its training stopped before the end (a stopped run saves the
        head as it was): its maps may not yet show what the classifier looks at. None for a finished head,
        or a card that says nothing about its training."""
        meta = self.explainer.metadata
        training = meta.training if meta is not None else {}
        if training.get("finished") is not False:
            return None
        steps, total = training.get("steps"), training.get("total_steps")
        counted = type(steps) is int and type(total) is int and 0 <= steps <= total  # a card is user input
        done = f" (stopped at step {steps:,} of {total:,})" if counted else ""
        return f"This head's training did not finish{done}: its maps may be weak."

    def describe(self) -> str:
        explainer = self.explainer
        meta = explainer.metadata
        variant = f", {meta.variant} head" if meta is not None else ""
        blur = ""
        if explainer.map_blur:  # the card's: say so, since it shapes every map shown
            pixels = blur_sigma_pixels(explainer.map_blur, explainer.backbone.preprocess.input_size)
            blur = f"; maps blurred (sigma {pixels:.0f} px)"
        return f"{explainer.backbone.name}{variant}, {len(explainer.layers)} branches on {', '.join(explainer.layers)}{blur}"


def load_model(choice: ModelChoice) -> LoadedModel:
    """Load the head and backbone a choice names (slow: the app caches the result per process)."""
    fingerprint = choice.fingerprint()
    explainer = Explainer.load(_head_source(choice), choice.backbone, device=choice.device, revision=choice.revision, weights=choice.weights)
    return LoadedModel(choice, explainer, fingerprint)


def store_uploaded_weights(name: str, data: bytes, folder: str | os.PathLike) -> Path:
    """Keep an uploaded classifier weights file in the session's ``folder`` under its content hash (same
    upload, same file: a stable model-cache key), after checking that it reads as a state dict."""
    suffix = Path(name).suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise BackboneError(f"{Path(name).name}: classifier weights must be a .safetensors, .pt or .pth file")
    if not data:
        raise BackboneError(f"{Path(name).name}: empty file (0 bytes)")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    if not path.exists():
        check_quota(len(data))
        write_atomically(path, data)
    try:
        read_weights(path)
    except BackboneError as error:
        path.unlink(missing_ok=True)
        raise BackboneError(f"{Path(name).name}: {str(error).split(': ', 1)[-1]}") from None
    return path


def _head_source(choice: ModelChoice) -> str | None:
    """What the app hands :meth:`Explainer.load`: a Hub head (a relative ``owner/name`` from the sidebar's Hub
    field) is pulled from the Hub and never looked up on this server's disk; local heads come as absolute
    paths the sidebar has already checked (:func:`~.storage.server_head`), or from ``$TAME_HEAD``."""
    head = choice.head
    if head is None or Path(head).is_absolute() or head == os.environ.get(HEAD_ENV):
        return head
    return str(pull_head(hub_repo_id(head), revision=choice.revision))


def store_uploaded_head(name: str, data: bytes, folder: str | os.PathLike | None = None) -> Path:
    """Keep an uploaded ``.safetensors`` head under a content-hash name and check it is a TAME head.

    The app passes its session's ``uploaded_heads`` folder, so uploads go with the session; a refused
    upload is deleted at once, and the studio folder's quota (:func:`~.storage.check_quota`) is kept.

    The card travels inside the file's header, so one file is enough. Identical uploads share a file,
    which also makes the upload a stable model-cache key.
    """
    if not name.lower().endswith(".safetensors"):
        raise CheckpointError(f"{name}: a head upload must be a .safetensors file")
    if not data:
        raise CheckpointError(f"{name}: empty file (0 bytes)")
    if len(data) > MAX_HEAD_UPLOAD_MB * 2**20:
        raise CheckpointError(f"{name}: {len(data) / 2**20:.0f} MB is over the {MAX_HEAD_UPLOAD_MB} MB head upload limit")
    root = Path(folder) if folder is not None else studio_dir() / "uploaded-heads"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{hashlib.sha256(data).hexdigest()[:20]}.safetensors"
    if not path.exists():  # a temporary file of its own: two sessions uploading the same head never mix writes
        check_quota(len(data))
        write_atomically(path, data)
    try:
        load_head(path)  # every check a load makes (digests, shapes, finite weights): a refused head is not kept
    except TameError as error:
        path.unlink(missing_ok=True)
        message = str(error).replace(str(path.with_suffix(".json")), name).replace(str(path), name)
        raise CheckpointError(message if message.startswith(name) else f"{name}: {message}") from None
    return path
