"""The resumable training state: head, optimizer, scheduler, step and RNG, written atomically.

A state is written to a temporary file, flushed to disk and renamed over the old one, so a run killed
at any moment (even with SIGKILL) leaves either the previous state or the new one, never half a file.
It is read back with ``weights_only=True``: nothing in it is unpickled as code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError

STATE_VERSION = 1


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
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save({"version": STATE_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_state(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"--resume: no training state at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise TrainingError(f"--resume: cannot read training state {path} ({' '.join(str(error).split())[:160]})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise TrainingError(f"--resume: {path} is not a training state this version of tame_core can read")
    return state
