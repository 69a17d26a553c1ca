"""``tame explain IMAGE... --out DIR``: maps (.npy) and overlays (.png) for each image, top-5 printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import ImageLoadError
from ..images import load_image
from ..maps import COLORMAPS, overlay
from ..preprocessing import GEOMETRIES
from .common import add_model_options, explainer_from


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help="explain images with a trained head", description=__doc__)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add_model_options(parser)
    parser.add_argument("--class", dest="target", help="class to explain (name, WordNet id or index; default: top-1)")
    parser.add_argument("--out", required=True, type=Path, help="folder for <stem>.npy and <stem>_overlay.png")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--geometry", choices=GEOMETRIES, default="full", help="full: whole image (default); crop: the classifier's centre crop")
    parser.add_argument("--colormap", choices=sorted(COLORMAPS), default="jet")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the heatmap")
    parser.add_argument("--top", type=int, default=5, help="how many predictions to print")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    explainer = explainer_from(args)
    target = None if args.target is None else explainer.backbone.class_index(args.target)  # fail before any work
    args.out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(args.images)
    loaded: dict[int, np.ndarray] = {}
    failures = 0

    def readable() -> Iterator[np.ndarray]:
        nonlocal failures
        for position, path in enumerate(args.images):
            try:
                picture = np.asarray(load_image(path))
            except ImageLoadError as error:
                failures += 1
                tqdm.write(f"error: {error}", file=sys.stderr)
                continue
            loaded[len(loaded)] = picture
            order.append(position)
            yield picture

    order: list[int] = []
    results = explainer.explain_many(readable(), classes=target, batch_size=args.batch_size, geometry=args.geometry)
    for index, explanation in tqdm(results, total=len(args.images), unit="img", desc="explain", file=sys.stderr):
        position = order[index]
        picture = loaded.pop(index)
        saliency = explanation.map_at_original(0, 0)
        stem = stems[position]
        np.save(args.out / f"{stem}.npy", saliency.astype(np.float32))
        Image.fromarray(overlay(picture, saliency, args.alpha, args.colormap)).save(args.out / f"{stem}_overlay.png")
        explained = int(explanation.classes[0, 0])
        names = explainer.backbone.class_names
        predictions = ", ".join(f"{name} {prob:.1%}" for _, name, prob in explanation.top_k(args.top)[0])
        tqdm.write(f"{args.images[position]}: explained '{names[explained]}' | top-{args.top}: {predictions}")
    return 1 if failures else 0


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, with ``-2``, ``-3``... added where two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
    return stems
