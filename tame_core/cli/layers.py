"""``tame layers`` lists tappable layers with their map sizes; ``tame backbones`` the registered backbones."""

from __future__ import annotations

import argparse

from ..backbones import DEFAULT_BACKBONE, get_backbone, list_backbones, load_backbone
from ..taps import list_layers
from .common import device_from


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("layers", help="list a backbone's layers and whether they can be tapped")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--weights", default="random",
                        help="weights to load: random (default; layer shapes do not depend on them), pretrained, or your fine-tune's file")
    parser.add_argument("--all", action="store_true", help="also list layers that cannot be tapped, with the reason")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(run=run_layers)
    parser = subparsers.add_parser("backbones", help="list the registered backbones")
    parser.set_defaults(run=run_backbones)


def run_layers(args: argparse.Namespace) -> int:
    backbone = load_backbone(args.backbone, weights=args.weights, device=device_from(args))
    defaults = {backbone.resolve_layer(layer) for layer in backbone.default_layers}
    pooled = backbone.pooled_layer
    for info in list_layers(backbone):
        if info.usable:
            mark = "*" if info.name in defaults else ("^" if info.name == pooled else " ")
            size = f"{info.map_size[0]}x{info.map_size[1]}"
            print(f"{mark} {info.name:<45} {info.module_type:<22} {info.channels:>5} ch  {size:>7}  {info.kind}")
        elif args.all:
            print(f"  {info.name:<45} {info.module_type:<22} cannot be tapped: {info.reason}")
    print("(* = default layers" + (f"; ^ = {pooled}, the layer global-pooled into the logits: the little-data recipe ends there)" if pooled and pooled not in defaults else ")"))
    print(f"{backbone.num_classes} classes ({backbone.source})")
    return 0


def run_backbones(args: argparse.Namespace) -> int:
    for name in list_backbones():
        print(f"{name:<20} {get_backbone(name).description}")
    print("any timm model also works: --backbone timm:<name>")
    return 0
