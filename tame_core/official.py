"""Import the official T-TAME checkpoints (Hub repo ``IDT-ITI/T-TAME-models``) into our format.

Those are PyTorch Lightning ``.ckpt`` files holding the whole model; the head's tensors sit under
``generic.attn_mech.`` (``generic.attn_mech.1.`` for ViTs, where index 0 is the token reshaper) as
``convs.i`` (branch 1x1 convs), ``bns.i`` (branch batch norms) and ``fuser``. They are read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from .backbones import load_backbone
from .card import HeadMetadata, metadata_for
from .checkpoint import save_head
from .errors import CheckpointError
from .head import VARIANTS, TAMEHead
from .taps import check_layers

OFFICIAL_REPO = "IDT-ITI/T-TAME-models"
_PREFIXES = ("generic.attn_mech.1.", "generic.attn_mech.")


def read_official_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The head tensors (with the prefix stripped) and the Lightning hyper-parameters of a ``.ckpt``."""
    try:
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as error:  # noqa: BLE001 - weights_only refusals and corrupt files alike
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: cannot be read as a tensors-only checkpoint ({reason})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict in this checkpoint")
    for prefix in _PREFIXES:
        head_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if any(key.startswith("fuser.") for key in head_state):
            hyper = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
            return head_state, hyper if isinstance(hyper, dict) else {}
    raise CheckpointError(f"{path}: no T-TAME head under 'generic.attn_mech.' in its state_dict")


def convert_official_state(state: dict[str, torch.Tensor], variant: str | None = None) -> TAMEHead:
    """Build our head from official key names (``convs.i``, ``bns.i``, ``fuser``)."""
    convs = sorted({int(m[1]) for k in state if (m := re.match(r"convs\.(\d+)\.weight$", k))})
    if not convs or convs != list(range(len(convs))):
        raise CheckpointError("official head has no consecutive convs.0.. branch convolutions")
    channels = [int(state[f"convs.{i}.weight"].shape[0]) for i in convs]
    has_bn = any(key.startswith("bns.") for key in state)
    variant = variant or ("tame" if has_bn else "no_bn")
    if VARIANTS.get(variant) is None:
        raise CheckpointError(f"unknown head variant {variant!r}")
    if VARIANTS[variant].batch_norm != has_bn:
        raise CheckpointError(f"variant {variant!r} does not match the checkpoint (batch norm {'present' if has_bn else 'absent'})")
    num_classes = int(state["fuser.weight"].shape[0])
    head = TAMEHead(channels, num_classes, variant)
    renamed = {}
    for key, value in state.items():
        if key.startswith("convs."):
            index, rest = key[len("convs.") :].split(".", 1)
            renamed[f"branches.{index}.conv.{rest}"] = value
        elif key.startswith("bns."):
            index, rest = key[len("bns.") :].split(".", 1)
            renamed[f"branches.{index}.bn.{rest}"] = value
        elif key.startswith("fuser."):
            renamed[key] = value
    expected = head.state_dict()
    problems = sorted(set(expected) ^ set(renamed)) + [
        k for k in expected if k in renamed and renamed[k].shape != expected[k].shape
    ]
    if problems:
        raise CheckpointError(f"official head tensors do not fit a {variant} head (e.g. {', '.join(problems[:3])})")
    head.load_state_dict(renamed)
    return head.eval()


def import_official_checkpoint(
    path: str | os.PathLike,
    out: str | os.PathLike,
    backbone_name: str | None = None,
    layers: Sequence[str] | None = None,
    variant: str | None = None,
) -> tuple[TAMEHead, HeadMetadata]:
    """Convert an official ``.ckpt`` to ``out`` (.safetensors + .json) and return the head and its card.

    The backbone and layers come from the checkpoint's hyper-parameters (``model_name``, ``layers``)
    unless given; they are checked against the real backbone's layer shapes.
    """
    state, hyper = read_official_state(path)
    head = convert_official_state(state, variant)
    backbone_name = backbone_name or hyper.get("model_name")
    layers = list(layers or hyper.get("layers") or [])
    if not backbone_name or not layers:
        raise CheckpointError(f"{path}: name the backbone and layers (the checkpoint does not record them)")
    backbone = load_backbone(backbone_name, weights="random")
    canonical = [backbone.resolve_layer(layer) for layer in layers]
    infos = check_layers(backbone, canonical)
    found = [info.channels for info in infos]
    if found != list(head.channels):
        raise CheckpointError(f"official head has branch channels {list(head.channels)} but layers {layers} of {backbone_name} give {found}")
    metadata = metadata_for(
        head,
        backbone,
        canonical,
        training={"source": f"official T-TAME checkpoint {Path(path).name}", "repo": OFFICIAL_REPO},
    )
    save_head(head, metadata, out)
    return head, metadata
