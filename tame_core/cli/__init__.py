"""The ``tame`` command. Each subcommand lives in its own module with ``register(subparsers)``.

User errors (:class:`~tame_core.errors.TameError`) print one line and exit 2; Ctrl-C exits 130.
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
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except TameError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
