"""Top-1 / top-5 accuracy of a backbone on a folder of ImageNet images named by WordNet id.

    python benchmarks/accuracy.py ../shared/data/imagenet-samples [--backbone efficientnet_lite0]

File names start with the class's WordNet id (``n01440764_tench.JPEG``); images go through the
classifier's own evaluation transform (geometry "crop").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tame_core import load_backbone
from tame_core.classes import imagenet_wnids
from tame_core.images import find_images, image_to_tensor, load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--geometry", default="crop", choices=("crop", "full"))
    args = parser.parse_args()

    backbone = load_backbone(args.backbone)
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    files = [f for f in find_images(args.data) if f.name.split("_")[0] in index]
    top1 = top5 = 0
    start = time.perf_counter()
    with torch.no_grad():
        for offset in tqdm(range(0, len(files), args.batch_size), unit="batch"):
            batch = files[offset : offset + args.batch_size]
            labels = torch.tensor([index[f.name.split("_")[0]] for f in batch])
            tensors = [image_to_tensor(load_image(f)) for f in batch]
            if args.geometry == "crop":
                logits = backbone(backbone.preprocess.batch(tensors, "crop"))
            else:  # whole pictures have different sizes: one at a time
                logits = torch.cat([backbone(backbone.preprocess.batch([t], "full")) for t in tensors])
            best = logits.topk(5, dim=1).indices
            top1 += int((best[:, 0] == labels).sum())
            top5 += int((best == labels[:, None]).any(1).sum())
    seconds = time.perf_counter() - start
    print(f"{args.backbone} on {len(files)} images ({args.geometry}): top-1 {top1 / len(files):.1%}, "
          f"top-5 {top5 / len(files):.1%} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
