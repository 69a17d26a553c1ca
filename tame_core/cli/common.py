"""Options and helpers every ``tame`` subcommand shares."""

from __future__ import annotations

import argparse

import torch

from ..explainer import Explainer, auto_device


def add_model_options(parser: argparse.ArgumentParser, head: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--backbone", help="backbone name (default: the head's, or efficientnet_lite0)")
    if head:
        group.add_argument("--head", help="head: a .safetensors path or a Hub repo id (default: the bundled head)")
        group.add_argument("--revision", help="Hub revision (branch, tag or commit) of --head")
    group.add_argument("--weights", default="pretrained", help="backbone weights: pretrained (default) or a local file")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    group.add_argument("--amp", action="store_true", help="mixed precision for the backbone forward")


def device_from(args: argparse.Namespace) -> torch.device:
    return auto_device() if args.device == "auto" else torch.device(args.device)


def explainer_from(args: argparse.Namespace) -> Explainer:
    return Explainer.load(
        args.head, args.backbone, device=device_from(args), revision=args.revision, amp=args.amp, weights=args.weights
    )
