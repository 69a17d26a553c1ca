"""Where models run and at what precision: one policy for explaining, evaluating and training."""

from __future__ import annotations

import contextlib

import torch


def auto_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype:
    """Mixed precision's type: bfloat16 wherever the device has it (float32's range, so no loss scaling
    and no overflow in logits), float16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` when ``enabled`` (see :func:`autocast_dtype`), else nothing."""
    return torch.autocast(device.type, dtype=autocast_dtype(device)) if enabled else contextlib.nullcontext()
