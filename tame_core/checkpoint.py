"""The head file format: a ``.safetensors`` file of tensors plus its JSON card, and their integrity.

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

The card's fields and their checks are in :mod:`tame_core.card`, the digests in :mod:`tame_core.fingerprint`;
where a head comes from (bundled, a local file or the Hub) is decided in :mod:`tame_core.heads`.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .atomic import atomic_path
from .card import HeadMetadata, is_whole_number, read_card, short_repr, write_card
from .errors import CheckpointError, OutputError
from .fingerprint import SAFETENSORS_DTYPES, bytes_sha256, safetensors_sha256, sha256_of, state_safetensors_sha256
from .head import TAMEHead
from .reading import check_regular, parse_json

_HEADER_KEY = "tame_head_metadata"
_MAX_HEADER_BYTES = 16 * 2**20
MAX_HEAD_BYTES = 4 * 2**30

#: safetensors dtype names and their sizes in bytes.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}


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


def save_head(head: TAMEHead, metadata: HeadMetadata, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` as ``.safetensors`` + ``.json``; each is written to a temporary file, then renamed."""
    from safetensors.torch import save_file

    tensor_path, card_path = paths_for(path)
    if metadata.head_config() != head.config():
        raise CheckpointError(f"metadata {metadata.head_config()} does not describe the head {head.config()}")
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    check_weights(state, f"{tensor_path.name} (not saved)")
    metadata.weights_sha256 = None  # a file cannot hold its own digest; the card gets it below
    metadata.tensors_sha256 = state_safetensors_sha256(state)
    try:
        with atomic_path(tensor_path) as temporary:
            save_file(state, str(temporary), metadata={_HEADER_KEY: metadata.to_json()})
        metadata.weights_sha256 = sha256_of(tensor_path)
        write_card(card_path, metadata, tensor_path)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"{tensor_path}: cannot write the head ({error.strerror or error})") from None
    return tensor_path, card_path


def read_metadata(path: str | os.PathLike) -> HeadMetadata:
    """The card beside the tensor file, or the copy embedded in its header when there is no card."""
    tensor_path, card_path = paths_for(path)
    if card_path.is_file():
        return read_card(card_path)
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
    metadata = read_card(card_path) if card_path.is_file() else embedded
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


# --- reading and checking ---------------------------------------------------------------------------
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
        raise CheckpointError(f"{path}: not a readable safetensors file ({short_repr(str(error))})") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: not a readable safetensors file (malformed __metadata__)")
    data_bytes, covered = size - 8 - length, 0
    for name, entry in header.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and entry["dtype"] in _DTYPE_BYTES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(is_whole_number(d) and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(is_whole_number(o) for o in offsets)
        ok = ok and 0 <= offsets[0] <= offsets[1] <= data_bytes
        ok = ok and offsets[1] - offsets[0] == math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]
        if not ok:
            raise CheckpointError(f"{path}: not a readable safetensors file (bad entry for tensor {short_repr(name)})")
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
                f"(card: {short_repr(mine)}, file: {short_repr(theirs)}): the card belongs to another head"
            )


def _check_tensors_match_card(entries: dict[str, dict[str, Any]], metadata: HeadMetadata, path: Path) -> None:
    """The file's tensors must be exactly those of the head the card describes, found without allocating it."""
    with torch.device("meta"):
        skeleton = TAMEHead(**metadata.head_config()).state_dict()
    problems = [f"missing {name}" for name in skeleton if name not in entries]
    problems += [f"unexpected {short_repr(name)}" for name in entries if name not in skeleton]
    for name, tensor in skeleton.items():
        entry = entries.get(name)
        if entry is None:
            continue
        if list(tensor.shape) != entry["shape"]:
            problems.append(f"{name} is {tuple(entry['shape'])}, card needs {tuple(tensor.shape)}")
        elif tensor.is_floating_point() != (entry["dtype"] in _FLOAT_DTYPES):
            problems.append(f"{name} is {entry['dtype']}, card needs {SAFETENSORS_DTYPES.get(tensor.dtype, tensor.dtype)}")
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
    if metadata.weights_sha256 and bytes_sha256(raw) != metadata.weights_sha256:
        raise CheckpointError(f"{tensor_path} does not match the SHA-256 in its card: the file is corrupt or was replaced")
    if expected_tensors:
        start = len(raw) - sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())
        view = memoryview(raw)[start:]
        actual = safetensors_sha256(
            (name, e["dtype"], e["shape"], view[e["data_offsets"][0] : e["data_offsets"][1]]) for name, e in entries.items()
        )
        if actual != expected_tensors:
            raise CheckpointError(f"{tensor_path}: its tensors do not match the SHA-256 recorded inside it: the file is corrupt or was altered")
