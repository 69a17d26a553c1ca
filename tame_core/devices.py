"""Where models run and at what precision: one policy for explaining, evaluating and training."""

from __future__ import annotations

import contextlib
import platform
import re
from pathlib import Path

import torch

from .errors import OptionError

_DEVICE = re.compile(r"^(cpu|cuda|mps)(?::(\d{1,3}))?$")


def auto_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(text: str | torch.device | None) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device this machine has, or one OptionError line.

    Checked before anything loads, so ``--device banana`` or ``--device cuda`` on a machine without a GPU
    says so instead of failing deep inside PyTorch.
    """
    if text is None or str(text).strip() == "auto":
        return auto_device()
    if isinstance(text, torch.device):
        text = str(text)
    found = _DEVICE.match(str(text).strip().lower())
    if found is None:
        shown = str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
        raise OptionError(f"device {shown!r} is not one of auto, cpu, cuda, cuda:N, mps")
    kind, index = found[1], found[2]
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"device {text!r}: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
        if index is not None and int(index) >= count:
            raise OptionError(f"device {text!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionError(f"device {text!r}: Apple's MPS is not available on this machine; use --device cpu")
    return torch.device(kind, int(index)) if index is not None else torch.device(kind)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """Mixed precision's type: bfloat16 wherever the device has it (float32's range, so no loss scaling
    and no overflow in logits), float16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` when ``enabled`` (see :func:`autocast_dtype`), else nothing."""
    return torch.autocast(device.type, dtype=autocast_dtype(device)) if enabled else contextlib.nullcontext()


def processor(device: torch.device) -> str:
    """The kind of chip ``device`` computes on, as a card records it: the CPU's model name and the
    vector width PyTorch's kernels use on it (``AMD EPYC; AVX512``), or the GPU's name.

    Why: float sums are grouped by the chip's vector width and its libraries' code paths, so the same
    training run on another kind of CPU differs in the last bits, and SGD grows them; a card that names
    its chip says whether a bit-for-bit retrain can be expected (scripts/check_bundled_head.py).
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}; {torch.backends.cpu.get_cpu_capability()}"
