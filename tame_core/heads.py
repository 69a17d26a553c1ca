"""Where a head comes from: the bundled head, a local file or a Hub repo id, and the classifier weights it needs.

It sits above :mod:`tame_core.checkpoint` (the file format) and :mod:`tame_core.hub` (downloads), so that
finding a head needs no import in a circle.
"""

from __future__ import annotations

import os
from pathlib import Path

from .card import HeadMetadata
from .checkpoint import paths_for
from .errors import CheckpointError
from .fingerprint import sha256_of
from .hub import is_repo_id, pull_head


def _bundled_heads_dir() -> Path:
    """The committed heads: ``checkpoints/`` at a source checkout's root, or ``tame_core/checkpoints`` where
    ``pip install`` put them (pyproject.toml ships the folder inside the wheel)."""
    package = Path(__file__).resolve().parent
    installed = package / "checkpoints"
    return installed if installed.is_dir() else package.parent / "checkpoints"


#: Where the bundled heads live (committed safetensors + JSON cards); ``TAME_CHECKPOINTS`` overrides it.
CHECKPOINT_DIR = Path(os.environ.get("TAME_CHECKPOINTS") or _bundled_heads_dir())

#: The head each backbone explains with when the user names none.
BUNDLED_HEADS = {"efficientnet_lite0": "efficientnet_lite0"}


def bundled_head_path(backbone_name: str) -> Path:
    """The committed head ``backbone_name`` explains with when the user names none."""
    if backbone_name not in BUNDLED_HEADS:
        raise CheckpointError(
            f"no bundled head for backbone {backbone_name!r}; pass a head (.safetensors path or Hub repo id), "
            "or train one with `tame train`"
        )
    return CHECKPOINT_DIR / f"{BUNDLED_HEADS[backbone_name]}.safetensors"


def locate_head(source: str | os.PathLike | None, backbone_name: str, revision: str | None = None) -> Path:
    """A local path for ``source``: bundled (None or "bundled"), an existing file, or a Hub repo id."""
    if source is None or str(source) == "bundled":
        return bundled_head_path(backbone_name)
    path = Path(source)
    tensor_path = paths_for(path)[0] if path.name else path
    if path.suffix in (".safetensors", ".json") or path.exists() or tensor_path.exists():
        if not tensor_path.is_file():
            card = paths_for(tensor_path)[1]
            beside = f" ({card.name} is only its card: the head's weights are the .safetensors file)" if card.is_file() else ""
            raise CheckpointError(f"no head checkpoint at {tensor_path}{beside}")
        return tensor_path
    if is_repo_id(str(source)):
        return pull_head(str(source), revision=revision)
    raise CheckpointError(f"head {str(source)!r} is neither a local .safetensors file nor a Hub repo id (owner/name)")


def classifier_weights_for(metadata: HeadMetadata, weights: str | os.PathLike | None, head_path: Path) -> str | os.PathLike:
    """The classifier weights to load for a head: ``weights`` as given, checked against the SHA-256 its card
    records, or (``None``) what the card says: the file it names when it lies beside the head (as a pulled
    Hub head with ``--with-weights`` has it), else ``"pretrained"``. Wrong weights are refused in one line."""
    card = metadata.classifier
    expected, name = card.get("weights_sha256"), card.get("weights", "pretrained")
    arch = metadata.backbone
    if weights is None:
        beside = head_path.parent / str(name)
        if not expected:
            return "random" if name == "random" else "pretrained"
        if beside.is_file() and sha256_of(beside) == expected:
            return beside
        raise CheckpointError(
            f"this head explains a fine-tuned {arch} (weights file {name}, SHA-256 {expected[:12]}...): "
            "pass that file with --weights"
        )
    if expected:
        actual = sha256_of(weights) if Path(weights).is_file() else None
        if actual != expected:
            given = Path(weights).name if actual else str(weights)
            raise CheckpointError(
                f"weights {given} are not the ones this head was trained for ({name}, SHA-256 {expected[:12]}...): "
                f"pass {name} with --weights, or train a head for these weights"
            )
    elif name == "pretrained" and str(weights) not in ("pretrained", "random") and card:
        raise CheckpointError(
            f"this head was trained for the pretrained {arch}, not for weights file {Path(weights).name}: "
            "train a head for those weights (tame train --weights ...)"
        )
    return weights
