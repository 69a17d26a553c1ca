"""Head checkpoints: a ``.safetensors`` file of tensors plus a JSON card of metadata.

``head.safetensors`` holds the head's tensors, with the metadata also embedded in its header (so
a lone uploaded file still loads); ``head.json`` beside it is the human-readable card and records the
SHA-256 of the tensor file, which Hub downloads are checked against. Nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import CheckpointError
from .head import TAMEHead

FORMAT = "tame-head"
FORMAT_VERSION = 1
_HEADER_KEY = "tame_head_metadata"


@dataclass
class HeadMetadata:
    """Everything needed to rebuild a head and to check that it fits a backbone."""

    backbone: str
    layers: list[str]
    channels: list[int]
    num_classes: int
    variant: str = "tame"
    max_resolution: int = 56
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    preprocessing: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    weights_sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "metadata") -> "HeadMetadata":
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{where} is not a TAME head card (format {data.get('format')!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{where} has format version {data['format_version']}; upgrade tame_core to read it")
        missing = [k for k in ("backbone", "layers", "channels", "num_classes") if k not in data]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def head_config(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "num_classes": self.num_classes,
            "variant": self.variant,
            "max_resolution": self.max_resolution,
        }


def metadata_for(head: TAMEHead, backbone: Any, layers: Sequence[str], **extra: Any) -> HeadMetadata:
    """Metadata describing ``head`` trained on ``backbone``'s ``layers``; ``extra`` fills the rest."""
    return HeadMetadata(
        backbone=backbone.name,
        layers=list(layers),
        input_size=list(backbone.preprocess.input_size),
        preprocessing=backbone.preprocess.to_dict(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **head.config(),
        **extra,
    )


def paths_for(path: str | os.PathLike) -> tuple[Path, Path]:
    """(tensor file, card) for ``x``, ``x.safetensors`` or ``x.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_head(head: TAMEHead, metadata: HeadMetadata, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` as ``.safetensors`` + ``.json``; each is written to a temporary file, then renamed."""
    from safetensors.torch import save_file

    tensor_path, card_path = paths_for(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    if metadata.head_config() != head.config():
        raise CheckpointError(f"metadata {metadata.head_config()} does not describe the head {head.config()}")
    metadata.weights_sha256 = None
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    temporary = tensor_path.with_suffix(".safetensors.tmp")
    save_file(state, str(temporary), metadata={_HEADER_KEY: metadata.to_json()})
    os.replace(temporary, tensor_path)
    metadata.weights_sha256 = sha256_of(tensor_path)
    temporary_card = card_path.with_suffix(".json.tmp")
    temporary_card.write_text(metadata.to_json() + "\n")
    os.replace(temporary_card, card_path)
    return tensor_path, card_path


def read_metadata(path: str | os.PathLike) -> HeadMetadata:
    """The card beside the tensor file, or the copy embedded in its header when there is no card."""
    tensor_path, card_path = paths_for(path)
    if card_path.is_file():
        try:
            data = json.loads(card_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{card_path}: not valid JSON ({error})") from None
        return HeadMetadata.from_dict(data, str(card_path))
    if not tensor_path.is_file():
        raise CheckpointError(f"no head checkpoint at {tensor_path}")
    header = _safetensors_header(tensor_path)
    if _HEADER_KEY not in header:
        raise CheckpointError(f"{tensor_path} has no TAME metadata in its header and no {card_path.name} beside it")
    return HeadMetadata.from_dict(json.loads(header[_HEADER_KEY]), str(tensor_path))


def load_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[TAMEHead, HeadMetadata]:
    """Rebuild a head and its metadata from a checkpoint, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_path, _ = paths_for(path)
    if not tensor_path.is_file():
        raise CheckpointError(f"no head checkpoint at {tensor_path}")
    metadata = read_metadata(tensor_path)
    if metadata.weights_sha256 and sha256_of(tensor_path) != metadata.weights_sha256:
        raise CheckpointError(f"{tensor_path} does not match the SHA-256 in its card: the file is corrupt or was replaced")
    try:
        state = load_file(str(tensor_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{tensor_path}: not a readable safetensors file ({error})") from None
    head = TAMEHead(**metadata.head_config())
    expected = head.state_dict()
    wrong = sorted(set(expected) ^ set(state)) + [
        k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if wrong:
        raise CheckpointError(f"{tensor_path}: tensors do not match the head its card describes (e.g. {', '.join(wrong[:3])})")
    head.load_state_dict(state)
    return head.to(device).eval(), metadata


def check_fits(metadata: HeadMetadata, backbone: Any, layers: Sequence[str], channels: Sequence[int]) -> None:
    """Raise a CheckpointError naming every difference between the head's card and this backbone."""
    differences = []
    if metadata.backbone != backbone.name:
        differences.append(f"backbone (head: {metadata.backbone!r}, here: {backbone.name!r})")
    resolved_card = [backbone.resolve_layer(layer) for layer in metadata.layers]
    resolved_here = [backbone.resolve_layer(layer) for layer in layers]
    if resolved_card != resolved_here:
        differences.append(f"layers (head: {metadata.layers}, here: {list(layers)})")
    elif list(metadata.channels) != list(channels):
        differences.append(f"channels (head: {metadata.channels}, here: {list(channels)})")
    if metadata.num_classes != backbone.num_classes:
        differences.append(f"classes (head: {metadata.num_classes}, here: {backbone.num_classes})")
    if differences:
        raise CheckpointError(f"head does not fit this backbone: different {'; '.join(differences)}")


def _safetensors_header(path: Path) -> dict[str, str]:
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    return header.get("__metadata__", {}) or {}
