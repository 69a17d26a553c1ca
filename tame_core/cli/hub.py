"""``tame pull`` / ``tame push`` heads on the Hugging Face Hub; ``tame import-official`` converts T-TAME checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import paths_for
from .common import writable_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pull", help="download a head from the Hub and print its local path")
    parser.add_argument("repo_id")
    parser.add_argument("--revision")
    parser.set_defaults(run=run_pull)

    parser = subparsers.add_parser(
        "push", help="upload a head with a generated model card",
        description="Upload a head (checked, and saved afresh without local paths) with a generated model card. "
        "A repo that does not exist yet is created PUBLIC unless --private is given.",
    )
    parser.add_argument("head", type=Path, help="the head's .safetensors (its .json card beside it, if any)")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--with-weights", type=Path, metavar="FILE",
                        help="also upload the fine-tuned classifier the head explains, so `tame pull` gives a complete explainer")
    parser.set_defaults(run=run_push)

    parser = subparsers.add_parser("import-official", help="convert an official T-TAME .ckpt into a head checkpoint")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors (card written beside it)")
    parser.add_argument("--backbone", help="backbone name if the checkpoint does not record it")
    parser.add_argument("--layers", nargs="+", help="tapped layers if the checkpoint does not record them")
    parser.add_argument("--variant", help="head variant (default: inferred)")
    parser.set_defaults(run=run_import)


def run_pull(args: argparse.Namespace) -> int:
    from ..hub import pull_head

    print(pull_head(args.repo_id, revision=args.revision))
    return 0


def run_push(args: argparse.Namespace) -> int:
    from ..hub import push_head

    if args.private:
        print(f"pushing to {args.repo_id}: created private if it is new (an existing repo keeps its visibility)", file=sys.stderr)
    else:
        print(f"pushing to {args.repo_id}: the repo is PUBLIC, anyone can download the head "
              "(unless it already exists as a private repo); use --private to create it private", file=sys.stderr)
    print(push_head(args.head, args.repo_id, token=args.token, private=args.private, revision=args.revision, with_weights=args.with_weights))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..official import import_official_checkpoint

    tensor_path, _ = paths_for(args.out)
    writable_folder(tensor_path.parent)
    _, metadata = import_official_checkpoint(args.checkpoint, tensor_path, args.backbone, args.layers, args.variant)
    print(f"wrote {tensor_path} ({metadata.backbone}, layers {metadata.layers})")
    return 0
