"""The ``tame`` command. Each subcommand lives in its own module with ``register(subparsers)``.

User errors (:class:`~tame_core.errors.TameError`) print one line and exit 2; Ctrl-C exits 130 with one
line, start-up included (``import tame_core`` loads nothing heavy until a command needs it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import TameError

_COMMAND_MODULES = ("explain", "layers", "hub", "train", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="tame", description="Explain image classifiers with trained attention heads.")
    parser.add_argument("--version", action="version", version=version_line(), help="print the versions a bug report needs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def version_line() -> str:
    """This package's version and the installed versions of what decides its numbers (read from the
    installed packages' metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    parts = [f"tame-core {__version__}"]
    for package in ("torch", "torchvision", "timm"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return ", ".join(parts) + f", Python {sys.version.split()[0]}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user error is one ``error:`` line (exit 2); Ctrl-C at any moment, from loading
    PyTorch to the backbone's start-up to the run itself, is one ``interrupted`` line (exit 130)."""
    try:
        parser = build_parser()  # imports PyTorch: a Ctrl-C here is handled below too
        args = parser.parse_args(argv)
        return int(args.run(args) or 0)
    except TameError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if type(error).__name__ == "Stopped" and type(error).__module__ == "tame_core.stopping":
            print("interrupted", file=sys.stderr)  # a stop asked for before the run's first step
            return 130
        raise
