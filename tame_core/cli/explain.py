"""``tame explain IMAGE... --out DIR``: maps (.npy) and overlays (.png) for each image, top-5 printed.

Each input gets ``<stem>.npy`` (float16 in [0, 1]) and ``<stem>_overlay.png``, at most 1024 px on the long
side (``--full-size``: the picture's own size); inputs that share a stem get ``<stem>-2``,
``<stem>-3``... (never another input's own stem). A file that cannot be read or written gets one
``error:`` line and the rest go on; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import ImageLoadError
from ..explainer import Explanation
from ..images import load_image, original_size
from ..maps import COLORMAPS, overlay
from ..preprocessing import GEOMETRIES
from ..streams import explain_stream
from .common import MAX_BATCH, MAX_CLASSES_PER_IMAGE, add_model_options, explainer_from, fraction, int_between, writable_folder

OVERLAY_SUFFIX = "_overlay.png"

#: Longest side of the maps and overlays written without ``--full-size``: a phone photo's full-size
#: float map is 49 MB, and the model saw 224 px of it.
OUTPUT_SIDE = 1024

#: Outputs that may wait for the disk while the model goes on (each holds one picture and its map).
WRITES_IN_FLIGHT = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help="explain images with a trained head", description=__doc__)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add_model_options(parser)
    parser.add_argument("--class", dest="target", help="class to explain (name, WordNet id or index; default: top-1)")
    parser.add_argument("--out", required=True, type=Path, help="folder for <stem>.npy and <stem>_overlay.png")
    parser.add_argument("--batch-size", type=int_between(1, MAX_BATCH), default=16)
    parser.add_argument("--geometry", choices=GEOMETRIES, default="full", help="full: whole image (default); crop: the classifier's centre crop")
    parser.add_argument("--colormap", choices=sorted(COLORMAPS), default="jet")
    parser.add_argument("--alpha", type=fraction, default=0.5, help="overlay opacity of the heatmap, 0..1")
    parser.add_argument("--top", type=int_between(1, MAX_CLASSES_PER_IMAGE), default=5, help="how many predictions to print")
    parser.add_argument(
        "--full-size", action="store_true", help=f"maps and overlays at the picture's own size (default: at most {OUTPUT_SIDE} px a side)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = writable_folder(args.out)  # before the model loads: a bad --out fails at once
    explainer = explainer_from(args)
    target = None if args.target is None else explainer.backbone.class_index(args.target)  # fail before any work
    stems = unique_stems(args.images, out)
    preprocess = explainer.backbone.preprocess
    # a JPEG decodes reduced to what the model and the written outputs need (the full picture for --full-size)
    decode = {} if args.full_size else {"min_short_side": preprocess.decode_short_side, "min_long_side": OUTPUT_SIDE}
    positions: list[int] = []  # stream index -> position in args.images
    pictures: dict[int, np.ndarray] = {}  # by stream index, until its map is computed
    sizes: dict[int, tuple[int, int]] = {}  # by stream index: (height, width) of its outputs
    failures = 0
    bar = tqdm(total=len(args.images), unit="img", desc="explain", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)

    def fail(message: str) -> None:
        nonlocal failures
        failures += 1
        bar.update()
        tqdm.write(f"error: {message}", file=sys.stderr)

    def readable() -> Iterator[np.ndarray]:
        for position, path in enumerate(args.images):
            try:
                image = load_image(path, **decode)
            except ImageLoadError as error:
                fail(str(error))
                continue
            pictures[len(positions)] = np.asarray(image)
            sizes[len(positions)] = output_size(*original_size(image), args.full_size)
            positions.append(position)
            yield pictures[len(positions) - 1]

    writes: deque[tuple[Future, int, str]] = deque()  # in stream order: (write, position, line to print)

    def report(waiting: int) -> None:
        """Report the finished writes in order; wait for the oldest while more than ``waiting`` are pending."""
        while writes and (len(writes) > waiting or writes[0][0].done()):
            write, position, line = writes.popleft()
            try:
                write.result()
            except OSError as error:
                fail(f"{args.images[position]}: cannot write its map into {out} ({error.strerror or error})")
                continue
            bar.update()
            tqdm.write(line)

    results = explain_stream(explainer, readable(), classes=target, batch_size=args.batch_size, geometry=args.geometry)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tame-write") as disk:  # the model never waits on it
        for index, explanation in results:
            position, picture = positions[index], pictures.pop(index)
            height, width = sizes.pop(index)
            saliency = preprocess.map_on_picture(explanation.maps[0, 0], height, width, explanation.geometry)
            write = disk.submit(_write, out, stems[position], picture, saliency, args.alpha, args.colormap)
            writes.append((write, position, summary(args.images[position], explanation, args.top)))
            report(WRITES_IN_FLIGHT - 1)
        report(0)
    bar.close()
    return 1 if failures else 0


def summary(path: Path, explanation: Explanation, top: int) -> str:
    """The line printed for one explained picture: the class explained and the ``top`` predictions."""
    explained = explanation.explainer.backbone.class_names[int(explanation.classes[0, 0])]
    predictions = ", ".join(f"{name} {prob:.1%}" for _, name, prob in explanation.top_k(top)[0])
    return f"{path}: explained '{explained}' | top-{top}: {predictions}"


def output_size(height: int, width: int, full_size: bool = False) -> tuple[int, int]:
    """(height, width) of the written map and overlay of a picture: at most :data:`OUTPUT_SIDE` on the
    long side, the aspect ratio kept (never enlarged), or the picture's own size with ``full_size``."""
    scale = 1.0 if full_size else min(1.0, OUTPUT_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _write(out: Path, stem: str, picture: np.ndarray, saliency: np.ndarray, alpha: float, colormap: str) -> None:
    """Both outputs of one image, or neither (a half-written pair is removed before the error goes up).

    The map is float16 (half the bytes of float32; a [0, 1] map keeps 3 decimals); a picture decoded at
    another size than the map is resized to it first."""
    npy, png = out / f"{stem}.npy", out / f"{stem}{OVERLAY_SUFFIX}"
    if picture.shape[:2] != saliency.shape:
        picture = cv2.resize(picture, (saliency.shape[1], saliency.shape[0]), interpolation=cv2.INTER_AREA)
    try:
        np.save(npy, saliency.astype(np.float16))
        Image.fromarray(overlay(picture, saliency, alpha, colormap)).save(png)
    except OSError:
        for path in (npy, png):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise


def unique_stems(paths: Sequence[Path], out: Path) -> list[str]:
    """One output stem per input, never shared, so no map overwrites another.

    An input keeps its own stem unless an earlier input took it; then it gets ``-2``, ``-3``... skipping
    any stem another input has (``same-2.jpg`` beside two ``same.jpg``). Stems are compared without case
    (macOS and Windows disks ignore it), and a stem whose outputs would replace one of the inputs is skipped.
    """
    own = {path.stem.casefold() for path in paths}
    inputs = {_identity(path) for path in paths}
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem, count = path.stem, 1
        while (
            stem.casefold() in taken
            or (count > 1 and stem.casefold() in own)
            or any(_identity(out / name) in inputs for name in (f"{stem}.npy", f"{stem}{OVERLAY_SUFFIX}"))
        ):
            count += 1
            stem = f"{path.stem}-{count}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def _identity(path: Path) -> str:
    """A comparable name for ``path`` (resolved, case-folded), whether or not it exists."""
    try:
        return os.path.normcase(str(path.resolve())).casefold()
    except (OSError, RuntimeError):
        return os.path.normcase(os.path.abspath(path)).casefold()
