"""Retrain the bundled head's recipe from scratch and check that its tensors equal the shipped ones, bit for bit.

    .venv/bin/python scripts/check_bundled_head.py [--work runs/bundled]

Uses the file list that ``scripts/train_bundled_head.py`` wrote into ``--work`` (run that first) and
trains into ``--work/check`` (replacing an earlier check) at the script's thread count (the tensors
match bit for bit only at the same count on the same kind of CPU: the cards name it, ``training.processor``),
then compares the cards' ``tensors_sha256``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from train_bundled_head import ROOT, SHIPPED, TRAIN_THREADS

from tame_core.training import TrainConfig, train_head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bundled")
    parser.add_argument("--bundled", type=Path, default=ROOT / "checkpoints" / "efficientnet_lite0.json")
    args = parser.parse_args()
    files = args.work / "train_files.txt"
    if not files.is_file():
        print(f"error: {files} is missing: run scripts/train_bundled_head.py first", file=sys.stderr)
        return 2
    out = args.work / "check" / "shipped.safetensors"
    torch.set_num_threads(TRAIN_THREADS)  # the float sums' split, and so the last bits, follow the thread count
    train_head(TrainConfig(data=[files], out=out, overwrite=True, **SHIPPED))
    retrained_card, bundled_card = json.loads(out.with_suffix(".json").read_text()), json.loads(args.bundled.read_text())
    retrained, bundled = retrained_card["tensors_sha256"], bundled_card["tensors_sha256"]
    print(f"retrained {retrained}\nbundled   {bundled}\nidentical: {retrained == bundled}")
    here, there = retrained_card["training"]["processor"], bundled_card["training"].get("processor", "not recorded")
    print(f"processor: here {here}; the bundled head's {there}")
    if retrained != bundled and here != there:
        print("a different kind of processor groups float sums differently and SGD grows the last bits: "
              "bit for bit needs the bundled head's processor (README, the bundled head)")
    return 0 if retrained == bundled else 1


if __name__ == "__main__":
    raise SystemExit(main())
