"""The resumable training state: head, optimizer, scheduler, step and RNG, checksummed and written atomically.

A state is written to a temporary file, flushed to disk and renamed over the old one, so a run killed
at any moment (even with SIGKILL) leaves either the previous state or the new one, never half a file.
The state's bytes travel inside a small wrapper that records their SHA-256: a file changed on disk (a
flipped bit, a partial copy, an edit) is refused instead of resuming to another head. Both layers are
read with ``weights_only=True``: nothing in a state is unpickled as code. :func:`check_state` then
compares every tensor with the run's head and optimizer before anything is loaded into them.
"""

from __future__ import annotations

import io
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import TrainingError
from ..fingerprint import bytes_sha256
from ..reading import read_regular

STATE_VERSION = 2

#: Largest state file read back, and largest step, image or second count it may hold.
MAX_STATE_BYTES = 4 * 2**30
MAX_COUNT = 1e15
STATE_FORMAT = "tame-training-state"

#: What a state holds, and the type of each part (checked before any of it is used).
STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": dict,
    "step": int,
    "seconds": (int, float),
    "images": int,
    "head": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "rng": dict,
    "targets_rng": torch.Tensor,
}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename), with its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"version": STATE_VERSION, **state}, buffer)
    payload = bytearray(buffer.getbuffer())
    wrapper = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "sha256": bytes_sha256(payload),
        "payload": torch.frombuffer(payload, dtype=torch.uint8),
    }
    with atomic_path(path, durable=True) as temporary:
        torch.save(wrapper, temporary)


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by :func:`save_state`; a missing, unreadable, changed or incomplete file is a
    one-line :class:`TrainingError`."""
    path = Path(path)
    if not os.path.lexists(path):
        raise TrainingError(f"--resume: no training state at {path}")
    raw = read_regular(path, MAX_STATE_BYTES, TrainingError, f"--resume: {path}")
    wrapper = _torch_load(io.BytesIO(raw), path)
    if not isinstance(wrapper, dict) or wrapper.get("format") != STATE_FORMAT:
        raise TrainingError(
            f"--resume: {path} is not a training state this version of tame_core can read "
            "(states saved before checksums were added cannot be resumed; start the run again)"
        )
    payload, recorded = wrapper.get("payload"), wrapper.get("sha256")
    if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.ndim == 1 and isinstance(recorded, str)):
        raise TrainingError(f"--resume: {path} is not a complete training state (no checksummed payload)")
    data = payload.numpy().tobytes()
    if bytes_sha256(data) != recorded:
        raise TrainingError(
            f"--resume: {path} does not match the SHA-256 recorded in it: the file is corrupt or was changed; "
            "remove it (or choose another --out) to start over"
        )
    state = _torch_load(io.BytesIO(data), path)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise TrainingError(f"--resume: {path} is not a training state this version of tame_core can read")
    missing = [name for name in STATE_FIELDS if name not in state]
    if missing:
        raise TrainingError(f"--resume: {path} is incomplete: no {', '.join(missing)}")
    wrong = [name for name, kind in STATE_FIELDS.items() if not isinstance(state[name], kind) or isinstance(state[name], bool)]
    if wrong:
        name = wrong[0]
        raise TrainingError(f"--resume: {path}: {name!r} is a {type(state[name]).__name__}, not a training state's {name}")
    for name in ("step", "images", "seconds"):
        value = state[name]
        if not (math.isfinite(value) and 0 <= value <= MAX_COUNT):
            raise TrainingError(f"--resume: {path}: {name} must be a number from 0 to {MAX_COUNT:.0e}, got {value!r}")
    return state


def check_state(state: Mapping[str, Any], head: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Refuse (one line) a state whose head tensors or optimizer buffers do not fit this run's head.

    Called before anything is loaded, so a bad state leaves the head and optimizer as they were.
    """
    expected = head.state_dict()
    saved = state["head"]
    problems = [f"{name} missing" for name in expected if name not in saved]
    problems += [f"unexpected {name}" for name in saved if name not in expected]
    problems += [
        f"{name} is {_shape(saved[name])}, the head needs {tuple(expected[name].shape)}"
        for name in expected
        if name in saved and _shape(saved[name]) != tuple(expected[name].shape)
    ]
    if not problems:
        problems = _optimizer_problems(state["optimizer"], optimizer)
    if problems:
        raise TrainingError(f"--resume: {path} does not fit this run's head: {'; '.join(problems[:3])}")


def _optimizer_problems(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> list[str]:
    groups, buffers = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(buffers, dict):
        return ["optimizer has no param_groups/state"]
    fresh = optimizer.state_dict()["param_groups"]
    if [group.get("params") if isinstance(group, dict) else None for group in groups] != [g["params"] for g in fresh]:
        return ["optimizer parameter groups differ"]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    problems = []
    for index, entry in buffers.items():
        if not (isinstance(index, int) and 0 <= index < len(parameters)) or not isinstance(entry, dict):
            problems.append(f"optimizer state for unknown parameter {index!r}")
            continue
        shape = tuple(parameters[index].shape)
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and tuple(value.shape) != shape:
                problems.append(f"optimizer {name} of parameter {index} is {tuple(value.shape)}, the parameter {shape}")
    return problems


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _torch_load(source: Path | io.BytesIO, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise TrainingError(f"--resume: cannot read training state {path} ({' '.join(str(error).split())[:160]})") from None
