"""Options and helpers every ``tame`` subcommand shares."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..devices import parse_device
from ..errors import OutputError
from ..explainer import Explainer


def add_model_options(parser: argparse.ArgumentParser, head: bool = True) -> None:
    group = parser.add_argument_group("model (a head's card names all of it; these override)")
    group.add_argument("--backbone", help="architecture: a registered name, a torchvision name or timm:<name> (default: the head's)")
    if head:
        group.add_argument("--head", help="head: a .safetensors path or a Hub repo id (default: the bundled head)")
        group.add_argument("--revision", help="Hub revision (branch, tag or commit) of --head")
    add_classifier_options(group, weights_default=None if head else "pretrained")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    group.add_argument("--amp", action="store_true", help="mixed precision for the backbone forward")


def add_classifier_options(group: argparse._ActionsContainer, weights_default: str | None) -> None:
    """``--weights``, ``--labels``, ``--input-size``, ``--mean``, ``--std``: your own fine-tuned classifier."""
    group.add_argument(
        "--weights", default=weights_default,
        help="classifier weights: pretrained, random, or your fine-tune's state dict (.safetensors, .pt, .pth; "
             "any number of classes)" + (" (default: what the head's card names)" if weights_default is None else ""),
    )
    group.add_argument("--labels", type=Path, help="class names: a text file with one per line, or a JSON list")
    group.add_argument("--input-size", type=input_size, metavar="N|HxW", help="model input size if your fine-tune differs")
    group.add_argument("--mean", type=rgb_triple, metavar="R,G,B", help="normalisation mean if your fine-tune differs")
    group.add_argument("--std", type=rgb_triple, metavar="R,G,B", help="normalisation std if your fine-tune differs")


def classifier_overrides(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict[str, Any] | None]:
    """(class names from ``--labels``, preprocessing overrides) as load_backbone and Explainer.load take them."""
    from ..classes import read_labels

    names = read_labels(args.labels) if args.labels is not None else None
    changes = {"input_size": args.input_size, "mean": args.mean, "std": args.std}
    return names, {k: list(v) for k, v in changes.items() if v is not None} or None


def device_from(args: argparse.Namespace) -> torch.device:
    return parse_device(args.device)


def explainer_from(args: argparse.Namespace) -> Explainer:
    names, preprocess = classifier_overrides(args)
    return Explainer.load(
        args.head, args.backbone, device=device_from(args), revision=args.revision, amp=args.amp, weights=args.weights,
        class_names=names, preprocess=preprocess,
    )


# --- argument types: argparse turns their refusals into one usage line and exit 2 -------------------
def positive_int(text: str) -> int:
    """A whole number of at least 1 (batch sizes, counts)."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (seeds, limits)."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


#: Upper bounds of counts, checked where the command line is parsed: far beyond real use, small enough that
#: a slip of the keyboard cannot ask for gigabytes or a run of years.
MAX_BATCH = 4_096
MAX_CLASSES_PER_IMAGE = 1_000
MAX_EPOCHS = 100_000
MAX_WORKERS = 256
MAX_SEED = 2**32 - 1  # what numpy, Python and PyTorch generators all take


def int_between(low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high`` (refusals are one usage line)."""

    def parse(text: str) -> int:
        value = _whole(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {'at least 1' if low == 1 else f'{low} or more'}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {_shown(text)}")
        return value

    parse.__name__ = f"whole number from {low} to {high}"
    return parse


def seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**32 - 1."""
    return int_between(0, MAX_SEED)(text)


def _shown(text: str) -> str:
    text = text.strip()
    return text if len(text) <= 24 else f"a number of {len(text)} digits"


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def fraction(text: str) -> float:
    """A number in [0, 1] (opacities)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (no nan or inf)."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (loss weights, weight decay)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (learning rates)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def input_size(text: str) -> tuple[int, int]:
    """``224`` (square) or ``256x320`` (height x width)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW")
    sides = [_whole(part.strip()) for part in parts]
    if not all(8 <= side <= 8192 for side in sides):
        raise argparse.ArgumentTypeError(f"sides must be from 8 to 8192 pixels, got {text}")
    return (sides[0], sides[-1])


def rgb_triple(text: str) -> tuple[float, float, float]:
    """Three finite numbers, ``0.5,0.5,0.5`` (a mean or std per colour channel)."""
    parts = [part for part in text.replace(" ", ",").split(",") if part]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"give three numbers R,G,B, got {text!r}")
    values = tuple(finite_float(part) for part in parts)
    return values  # type: ignore[return-value]


def _whole(text: str) -> int:
    if len(text.strip()) > 40:  # also keeps Python's 4300-digit limit for int() out of the way
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number this option can take")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


# --- outputs ----------------------------------------------------------------------------------------
def writable_folder(path: Path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove a file can be written in it, before any slow work starts."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tame-write-check-"):
            pass
    except OSError as error:
        raise OutputError(f"{flag} {path}: cannot write there ({error.strerror or error})") from None
    return path
