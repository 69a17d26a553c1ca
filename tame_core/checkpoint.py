"""Head checkpoints: a ``.safetensors`` file of tensors plus a JSON card of metadata.

``head.safetensors`` holds the head's tensors, with the metadata also embedded in its header (so
a lone uploaded file still loads); ``head.json`` beside it is the human-readable card. Nothing is
ever unpickled, and nothing is built before the card has been checked against the tensors:

1. every card field is checked for its type and range (a hostile ``num_classes: 1e9`` is refused);
2. the tensor names, shapes and dtypes in the safetensors header must be exactly those of the head the
   card describes (worked out on PyTorch's ``meta`` device, which allocates nothing), and the card must
   agree with the metadata embedded in the file;
3. integrity is never optional. The embedded metadata records ``tensors_sha256``, a SHA-256 over every
   tensor's name, dtype, shape and bytes; the card records ``weights_sha256``, the SHA-256 of the whole
   file (what Hub downloads are checked against). Every digest present must match, and a head with
   neither (a file saved by an older version whose card was lost, or a card without a digest beside
   such a file) is refused: re-save it with :func:`save_head`.

Where a head comes from is decided here too: :func:`locate_head` takes the bundled head, a local file
or a Hub repo id.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

import torch

from .atomic import atomic_path, write_atomically
from .errors import CheckpointError, OutputError
from .reading import check_regular, parse_json, read_json
from .head import VARIANTS, TAMEHead

FORMAT = "tame-head"
FORMAT_VERSION = 1
_HEADER_KEY = "tame_head_metadata"

#: Where the bundled heads live (committed safetensors + JSON cards).
CHECKPOINT_DIR = Path(os.environ.get("TAME_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))

#: The head each backbone explains with when the user names none.
BUNDLED_HEADS = {"efficientnet_lite0": "efficientnet_lite0"}

#: Bounds on card fields: far beyond any real classifier, small enough to refuse nonsense up front.
MAX_BRANCHES = 64
MAX_CHANNELS = 65_536
MAX_CLASSES = 1_000_000
MAX_FUSED_RESOLUTION = 4_096
MAX_INPUT_SIDE = 8_192
_MAX_HEADER_BYTES = 16 * 2**20
MAX_HEAD_BYTES = 4 * 2**30

#: safetensors dtype names and their sizes in bytes.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
_TORCH_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
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
    tensors_sha256: str | None = None  # the tensors alone (see tensors_digest): embedded and in the card
    #: The classifier the head explains: ``weights`` ("pretrained", "random" or a file name, never a path),
    #: that file's ``weights_sha256`` (a head is never used with other weights) and ``num_classes``.
    classifier: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None  # the classifier's own names (None: its architecture's)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "metadata") -> "HeadMetadata":
        """A card's fields, each checked for its type and range; anything else is a one-line CheckpointError."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is not a TAME head card (a JSON {type(data).__name__}, not an object)")
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{where} is not a TAME head card (format {_short(data.get('format'))})")
        version = data.get("format_version", FORMAT_VERSION)
        if not _is_int(version) or version < 1:
            raise CheckpointError(f"{where}: format_version must be a whole number, got {_short(version)}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{where} has format version {version}; upgrade tame_core to read it")
        missing = [k for k in ("backbone", "layers", "channels", "num_classes") if k not in data]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name, value in known.items():
            problem = _field_problem(name, value)
            if problem:
                raise CheckpointError(f"{where}: {name} {problem}, got {_short(value)}")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(v) and low <= v <= high for v in value)


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
    if name == "num_classes" and not (_is_int(value) and 1 <= value <= MAX_CLASSES):
        return f"must be a whole number from 1 to {MAX_CLASSES}"
    if name == "max_resolution" and not (_is_int(value) and 1 <= value <= MAX_FUSED_RESOLUTION):
        return f"must be a whole number from 1 to {MAX_FUSED_RESOLUTION}"
    if name == "input_size" and not (_ints_in(value, 1, MAX_INPUT_SIDE) and len(value) == 2):
        return f"must be [height, width], whole numbers from 1 to {MAX_INPUT_SIDE}"
    if name in ("preprocessing", "training", "data", "metrics") and not isinstance(value, dict):
        return "must be a JSON object"
    if name == "created" and not isinstance(value, str):
        return "must be a string"
    if name in ("weights_sha256", "tensors_sha256") and value is not None and not (isinstance(value, str) and _SHA256.match(value)):
        return "must be 64 lowercase hex digits"
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
    if classes is not None and not (_is_int(classes) and 1 <= classes <= MAX_CLASSES):
        return f"num_classes must be a whole number from 1 to {MAX_CLASSES}"
    return None


def _short(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 128:  # repr of a 5,000-digit int raises
        return f"a whole number of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except ValueError:  # a huge whole number inside a list or dict
        return f"a {type(value).__name__} holding a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


def bundled_head_path(backbone_name: str) -> Path:
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
    from .hub import is_repo_id, pull_head

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


def paths_for(path: str | os.PathLike) -> tuple[Path, Path]:
    """(tensor file, card) for ``x``, ``x.safetensors`` or ``x.json``.

    Only those two endings are replaced, so ``head.v2`` and ``head.v2.safetensors`` both mean
    ``head.v2.safetensors`` + ``head.v2.json`` (never ``head.safetensors``).
    """
    path = Path(path)
    if not path.name:
        raise CheckpointError(f"{str(path)!r} does not name a head file")
    base = path.name[: -len(path.suffix)] if path.suffix in (".safetensors", ".json") else path.name
    return path.with_name(f"{base}.safetensors"), path.with_name(f"{base}.json")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_digest(tensors: Iterable[tuple[str, str, Sequence[int], Any]]) -> str:
    """SHA-256 over (name, safetensors dtype, shape, raw little-endian bytes) of each tensor, in name order.

    It covers the tensors and nothing else, so it can travel inside the file it describes.
    """
    digest = hashlib.sha256()
    for name, dtype, shape, data in sorted(tensors, key=lambda item: item[0]):
        digest.update(f"{name}\0{dtype}\0{','.join(map(str, shape))}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    def raw(tensor: torch.Tensor) -> bytes:
        return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()

    return tensors_digest((name, _TORCH_DTYPES[t.dtype], tuple(t.shape), raw(t)) for name, t in state.items())


def save_head(head: TAMEHead, metadata: HeadMetadata, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` as ``.safetensors`` + ``.json``; each is written to a temporary file, then renamed."""
    from safetensors.torch import save_file

    tensor_path, card_path = paths_for(path)
    if metadata.head_config() != head.config():
        raise CheckpointError(f"metadata {metadata.head_config()} does not describe the head {head.config()}")
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    check_weights(state, f"{tensor_path.name} (not saved)")
    metadata.weights_sha256 = None  # a file cannot hold its own digest; the card gets it below
    metadata.tensors_sha256 = _state_digest(state)
    try:
        with atomic_path(tensor_path) as temporary:
            save_file(state, str(temporary), metadata={_HEADER_KEY: metadata.to_json()})
        metadata.weights_sha256 = sha256_of(tensor_path)
        _write_card(card_path, metadata, tensor_path)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"{tensor_path}: cannot write the head ({error.strerror or error})") from None
    return tensor_path, card_path


def _write_card(card_path: Path, metadata: HeadMetadata, tensor_path: Path) -> None:
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


def read_metadata(path: str | os.PathLike) -> HeadMetadata:
    """The card beside the tensor file, or the copy embedded in its header when there is no card."""
    tensor_path, card_path = paths_for(path)
    if card_path.is_file():
        return _read_card(card_path)
    if not tensor_path.is_file():
        raise CheckpointError(f"no head checkpoint at {tensor_path}")
    embedded = _embedded_metadata(tensor_path, _read_header(tensor_path)[1])
    if embedded is None:
        raise CheckpointError(f"{tensor_path} has no TAME metadata in its header and no {card_path.name} beside it")
    return embedded


def load_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[TAMEHead, HeadMetadata]:
    """Rebuild a head and its metadata from a checkpoint, in eval mode, after every check above."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    tensor_path, card_path = paths_for(path)
    if not tensor_path.is_file():
        raise CheckpointError(f"no head checkpoint at {tensor_path}")
    entries, header_metadata = _read_header(tensor_path)
    embedded = _embedded_metadata(tensor_path, header_metadata)
    metadata = _read_card(card_path) if card_path.is_file() else embedded
    if metadata is None:
        raise CheckpointError(f"{tensor_path} has no TAME metadata in its header and no {card_path.name} beside it")
    if embedded is not None and metadata is not embedded:
        _check_card_matches_file(metadata, embedded, card_path, tensor_path)
    _check_tensors_match_card(entries, metadata, tensor_path)
    raw = _read_checked(tensor_path, entries, header_metadata)
    _check_integrity(raw, entries, metadata, embedded, tensor_path, card_path)
    try:
        state = load_tensors(raw)
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"{tensor_path}: not a readable safetensors file ({error})") from None
    check_weights(state, str(tensor_path))
    head = TAMEHead(**metadata.head_config())
    head.load_state_dict(state)
    return head.to(device).eval(), metadata


def check_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse, in one line, a head whose weights would give NaN maps: a non-finite value anywhere, or a
    negative BatchNorm ``running_var`` (its square root is NaN). Checked at every load and every save."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{where}: {name} holds {bad} NaN or infinite value(s); the head is unusable")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise CheckpointError(f"{where}: {name} holds negative variances; the head is unusable")


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


# --- reading and checking ---------------------------------------------------------------------------
def _read_card(card_path: Path) -> HeadMetadata:
    return HeadMetadata.from_dict(read_json(card_path, CheckpointError), str(card_path))


def _embedded_metadata(tensor_path: Path, header_metadata: dict[str, str]) -> HeadMetadata | None:
    if _HEADER_KEY not in header_metadata:
        return None
    data = parse_json(header_metadata[_HEADER_KEY], CheckpointError, f"{tensor_path}: the metadata in its header")
    return HeadMetadata.from_dict(data, f"{tensor_path} (embedded metadata)")


def _read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(tensor entries, ``__metadata__``) of a safetensors file, each entry checked to lie inside the file."""
    try:
        with open(path, "rb") as handle:
            return _parse_header(handle, check_regular(handle.fileno(), MAX_HEAD_BYTES, CheckpointError, str(path)), path)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None


def _parse_header(handle: BinaryIO, size: int, path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    try:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length <= min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError("bad header length")
        header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_short(str(error))})") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: not a readable safetensors file (malformed __metadata__)")
    data_bytes, covered = size - 8 - length, 0
    for name, entry in header.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and entry["dtype"] in _DTYPE_BYTES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
        ok = ok and 0 <= offsets[0] <= offsets[1] <= data_bytes
        ok = ok and offsets[1] - offsets[0] == math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]
        if not ok:
            raise CheckpointError(f"{path}: not a readable safetensors file (bad entry for tensor {_short(name)})")
        covered += offsets[1] - offsets[0]
    if covered != data_bytes:
        raise CheckpointError(f"{path}: not a readable safetensors file ({data_bytes} data bytes, tensors cover {covered})")
    return header, metadata


def _read_checked(path: Path, entries: dict[str, dict[str, Any]], header_metadata: dict[str, str]) -> bytes:
    """The whole file in one read, which must hold the header already checked: what is verified is what loads."""
    size = 8 + sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())
    try:
        with open(path, "rb") as handle:
            size += int.from_bytes(handle.read(8), "little")
            handle.seek(0)
            raw = handle.read(size + 1)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    if len(raw) != size or _parse_header(io.BytesIO(raw), len(raw), path) != (entries, header_metadata):
        raise CheckpointError(f"{path} changed while it was being read; try again")
    return raw


def _check_card_matches_file(card: HeadMetadata, embedded: HeadMetadata, card_path: Path, tensor_path: Path) -> None:
    for name in ("backbone", "layers", "channels", "num_classes", "variant", "max_resolution", "tensors_sha256", "classifier", "class_names"):
        mine, theirs = getattr(card, name), getattr(embedded, name)
        if name == "tensors_sha256" and mine is None:
            continue  # a hand-written card need not repeat the digest
        if mine != theirs:
            raise CheckpointError(
                f"{card_path.name} and the metadata inside {tensor_path.name} disagree on {name} "
                f"(card: {_short(mine)}, file: {_short(theirs)}): the card belongs to another head"
            )


def _check_tensors_match_card(entries: dict[str, dict[str, Any]], metadata: HeadMetadata, path: Path) -> None:
    """The file's tensors must be exactly those of the head the card describes, found without allocating it."""
    with torch.device("meta"):
        skeleton = TAMEHead(**metadata.head_config()).state_dict()
    problems = [f"missing {name}" for name in skeleton if name not in entries]
    problems += [f"unexpected {_short(name)}" for name in entries if name not in skeleton]
    for name, tensor in skeleton.items():
        entry = entries.get(name)
        if entry is None:
            continue
        if list(tensor.shape) != entry["shape"]:
            problems.append(f"{name} is {tuple(entry['shape'])}, card needs {tuple(tensor.shape)}")
        elif tensor.is_floating_point() != (entry["dtype"] in _FLOAT_DTYPES):
            problems.append(f"{name} is {entry['dtype']}, card needs {_TORCH_DTYPES.get(tensor.dtype, tensor.dtype)}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"{path}: tensors do not match the head its card describes ({shown})")


def _check_integrity(
    raw: bytes,
    entries: dict[str, dict[str, Any]],
    metadata: HeadMetadata,
    embedded: HeadMetadata | None,
    tensor_path: Path,
    card_path: Path,
) -> None:
    """Every digest present must match, and there must be at least one."""
    expected_tensors = embedded.tensors_sha256 if embedded is not None else None
    if not metadata.weights_sha256 and not expected_tensors:
        where = (
            f"neither {card_path.name} nor its header records a SHA-256" if card_path.is_file()
            else f"no {card_path.name} beside it and no SHA-256 in its header"
        )
        raise CheckpointError(f"{tensor_path}: {where}, so its integrity cannot be checked; re-save it with tame_core.save_head")
    if metadata.weights_sha256 and hashlib.sha256(raw).hexdigest() != metadata.weights_sha256:
        raise CheckpointError(f"{tensor_path} does not match the SHA-256 in its card: the file is corrupt or was replaced")
    if expected_tensors:
        start = len(raw) - sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())
        view = memoryview(raw)[start:]
        actual = tensors_digest(
            (name, e["dtype"], e["shape"], view[e["data_offsets"][0] : e["data_offsets"][1]]) for name, e in entries.items()
        )
        if actual != expected_tensors:
            raise CheckpointError(f"{tensor_path}: its tensors do not match the SHA-256 recorded inside it: the file is corrupt or was altered")
