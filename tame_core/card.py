"""A head's card: :class:`HeadMetadata`, the JSON that says what a head is and which classifier it explains.

The card travels twice: as ``head.json`` beside the tensors (human-readable) and embedded in the
``.safetensors`` header (so a lone uploaded file still loads; see :mod:`tame_core.checkpoint`). Every field is
checked for its type and range before anything is built (a hostile ``num_classes: 1e9`` is refused), and
:func:`check_fits` names every way a card differs from the backbone it is about to explain.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .atomic import write_atomically
from .errors import CheckpointError, OutputError
from .head import VARIANTS, TAMEHead
from .maps import MAX_MAP_BLUR
from .reading import read_json

FORMAT = "tame-head"
FORMAT_VERSION = 1

#: Bounds on card fields: far beyond any real classifier, small enough to refuse nonsense up front.
MAX_BRANCHES = 64
MAX_CHANNELS = 65_536
MAX_CLASSES = 1_000_000
MAX_FUSED_RESOLUTION = 4_096
MAX_INPUT_SIDE = 8_192
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    weights_sha256: str | None = None  # the whole .safetensors file (in the card only)
    tensors_sha256: str | None = None  # the tensors alone (see fingerprint.safetensors_sha256): embedded and in the card
    #: The classifier the head explains: ``weights`` ("pretrained", "random" or a file name, never a path),
    #: that file's ``weights_sha256`` (a head is never used with other weights) and ``num_classes``.
    classifier: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None  # the classifier's own names (None: its architecture's)
    #: Gaussian blur of every map at the model's input, sigma as a fraction of its shorter side (0: none;
    #: see :func:`~tame_core.maps.blur_maps`). Applied when maps are made, so the tensors stay the trained ones.
    map_blur: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "metadata") -> "HeadMetadata":
        """A card's fields, each checked for its type and range; anything else is a one-line CheckpointError."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is not a TAME head card (a JSON {type(data).__name__}, not an object)")
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{where} is not a TAME head card (format {short_repr(data.get('format'))})")
        version = data.get("format_version", FORMAT_VERSION)
        if not is_whole_number(version) or version < 1:
            raise CheckpointError(f"{where}: format_version must be a whole number, got {short_repr(version)}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{where} has format version {version}; upgrade tame_core to read it")
        missing = [k for k in ("backbone", "layers", "channels", "num_classes") if k not in data]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name, value in known.items():
            problem = _field_problem(name, value)
            if problem:
                raise CheckpointError(f"{where}: {name} {problem}, got {short_repr(value)}")
        if known.get("class_names") is not None and len(known["class_names"]) != known["num_classes"]:
            raise CheckpointError(
                f"{where}: {len(known['class_names'])} class names for {known['num_classes']} classes; they go one per class"
            )
        if len(known["channels"]) != len(known["layers"]):
            raise CheckpointError(
                f"{where}: {len(known['layers'])} layers but {len(known['channels'])} channel counts; they go one per layer"
            )
        return cls(**known)

    def head_config(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "num_classes": self.num_classes,
            "variant": self.variant,
            "max_resolution": self.max_resolution,
        }


def is_whole_number(value: Any) -> bool:
    """An int that is not a bool (JSON ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _ints_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, list) and bool(value) and all(is_whole_number(v) and low <= v <= high for v in value)


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one card field, or None."""
    if name in ("backbone", "variant") and (not isinstance(value, str) or not value.strip()):
        return "must be a non-empty string"
    if name == "variant" and value not in VARIANTS:
        return f"must be one of {', '.join(VARIANTS)}"
    if name == "layers" and not (
        isinstance(value, list) and 0 < len(value) <= MAX_BRANCHES and all(isinstance(v, str) and v.strip() for v in value)
    ):
        return f"must be a list of 1 to {MAX_BRANCHES} layer names"
    if name == "channels" and not (_ints_in(value, 1, MAX_CHANNELS) and len(value) <= MAX_BRANCHES):
        return f"must be a list of whole numbers from 1 to {MAX_CHANNELS}, one per layer"
    if name == "num_classes" and not (is_whole_number(value) and 1 <= value <= MAX_CLASSES):
        return f"must be a whole number from 1 to {MAX_CLASSES}"
    if name == "max_resolution" and not (is_whole_number(value) and 1 <= value <= MAX_FUSED_RESOLUTION):
        return f"must be a whole number from 1 to {MAX_FUSED_RESOLUTION}"
    if name == "input_size" and not (_ints_in(value, 1, MAX_INPUT_SIDE) and len(value) == 2):
        return f"must be [height, width], whole numbers from 1 to {MAX_INPUT_SIDE}"
    if name in ("preprocessing", "training", "data", "metrics") and not isinstance(value, dict):
        return "must be a JSON object"
    if name == "created" and not isinstance(value, str):
        return "must be a string"
    if name in ("weights_sha256", "tensors_sha256") and value is not None and not (isinstance(value, str) and _SHA256.match(value)):
        return "must be 64 lowercase hex digits"
    if name == "map_blur" and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= MAX_MAP_BLUR
    ):
        return f"must be a number from 0 to {MAX_MAP_BLUR} (a fraction of the input's shorter side)"
    if name == "classifier":
        return _classifier_problem(value)
    if name == "class_names" and value is not None:
        if not (isinstance(value, list) and all(isinstance(v, str) and 0 < len(v.strip()) <= MAX_NAME_LENGTH for v in value)):
            return f"must be a list of non-empty names of at most {MAX_NAME_LENGTH} characters"
        if len({v.strip().casefold() for v in value}) != len(value):
            return "must not repeat a name"
    return None


#: Longest class name a card may hold.
MAX_NAME_LENGTH = 200


def _classifier_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a JSON object"
    weights, digest, classes = value.get("weights"), value.get("weights_sha256"), value.get("num_classes")
    if weights is not None and not (isinstance(weights, str) and weights.strip() and len(weights) <= 255 and "/" not in weights and "\\" not in weights):
        return "weights must be pretrained, random or a file name (no folders)"
    if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
        return "weights_sha256 must be 64 lowercase hex digits"
    if classes is not None and not (is_whole_number(classes) and 1 <= classes <= MAX_CLASSES):
        return f"num_classes must be a whole number from 1 to {MAX_CLASSES}"
    return None


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to 60 characters, safe for any JSON value: what an error message quotes."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr of a 5,000-digit int raises
        return f"a whole number of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except ValueError:  # a huge whole number inside a list or dict
        return f"a {type(value).__name__} holding a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


def metadata_for(head: TAMEHead, backbone: Any, layers: Sequence[str], **extra: Any) -> HeadMetadata:
    """Metadata describing ``head`` trained on ``backbone``'s ``layers``; ``extra`` fills the rest."""
    classifier = {"weights": backbone.weights_name, "weights_sha256": backbone.weights_sha256, "num_classes": backbone.num_classes}
    return HeadMetadata(
        backbone=backbone.name,
        layers=list(layers),
        input_size=list(backbone.preprocess.input_size),
        preprocessing=backbone.preprocess.to_dict(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        classifier={k: v for k, v in classifier.items() if v is not None},
        class_names=list(backbone.class_names) if backbone.custom_class_names else None,
        **head.config(),
        **extra,
    )


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
    expected = metadata.classifier.get("weights_sha256")
    if expected and backbone.weights_sha256 and backbone.weights_sha256 != expected:
        differences.append(f"classifier weights (head: {metadata.classifier.get('weights')} {expected[:12]}..., here: {backbone.weights_name} {backbone.weights_sha256[:12]}...)")
    if differences:
        raise CheckpointError(f"head does not fit this backbone: different {'; '.join(differences)}")


# --- the card file ---------------------------------------------------------------------------------
def read_card(card_path: Path) -> HeadMetadata:
    """The card at ``card_path``, every field checked."""
    return HeadMetadata.from_dict(read_json(card_path, CheckpointError), str(card_path))


def write_card(card_path: Path, metadata: HeadMetadata, tensor_path: Path) -> None:
    """The card, after its tensors: if it cannot be written, an old card (which would now disagree with the
    new tensors) is removed, so the head still loads from the metadata inside its file."""
    try:
        write_atomically(card_path, metadata.to_json() + "\n")
    except OutputError as error:
        card_path.unlink(missing_ok=True)
        reason = str(error).split("cannot write (", 1)[-1].split(")", 1)[0]
        raise OutputError(
            f"{card_path}: cannot write ({reason}); the new head was saved in {tensor_path.name} "
            "and loads from the metadata inside it"
        ) from None
