"""`tame explain` on phone-sized photos against the same photos at 256 px, side by side in one run.

    python benchmarks/bench_photos.py FOLDER [--count 16] [--head PATH] [--device cpu] [--repeats 3]

FOLDER holds JPEG photos (for example ../shared/data/photos/coco). The first ``--count`` are written into a
temporary folder twice: enlarged to 12 megapixels (4032 px on the long side, as a phone takes them) and at
256 px on the short side. The model loads once; then ``tame explain`` (the CLI's own code path, default
options: reduced decode, outputs at most 1024 px) runs on each folder in turns, and the median times give
images per second, excluding start-up. It prints the bytes written per photo, and compares the draft
(DCT-scaled) decode with a full decode of the 12 MP files: top-1 agreement and the largest difference of
the maps written (at their bounded size).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHONE_SIDE = 4032  # the long side of a 12-megapixel photo (4032 x 3024)
SMALL_SIDE = 256


def make_photos(sources: list[Path], root: Path) -> tuple[Path, Path]:
    """The same photos at 12 MP and at 256 px (short side), as JPEGs of quality 92 like a phone's."""
    big, small = root / "phone", root / "small"
    big.mkdir()
    small.mkdir()
    for path in sources:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
        scale = PHONE_SIDE / max(picture.size)
        picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BICUBIC).save(
            big / f"{path.stem}.jpg", quality=92
        )
        scale = SMALL_SIDE / min(picture.size)
        picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BICUBIC).save(
            small / f"{path.stem}.jpg", quality=92
        )
    return big, small


def explain_seconds(folder: Path, out: Path) -> float:
    """Seconds of one `tame explain FOLDER/* --out OUT` with the model already loaded (the CLI's own run)."""
    from tame_core.cli import main

    shutil.rmtree(out, ignore_errors=True)
    files = sorted(str(path) for path in folder.iterdir())
    with contextlib.redirect_stdout(io.StringIO()):  # one line per photo: not what this benchmark shows
        start = time.perf_counter()
        code = main(["explain", *files, "--out", str(out), "--no-progress"])
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"tame explain failed on {folder} (exit {code})")
    return seconds


def decode_agreement(explainer, folder: Path) -> tuple[int, int, float]:
    """(photos whose top-1 is the same, photos, largest map difference) of draft against full decodes."""
    from tame_core.cli.explain import OUTPUT_SIDE, output_size
    from tame_core.images import load_image, original_size

    preprocess = explainer.backbone.preprocess
    same, largest = 0, 0.0
    files = sorted(folder.iterdir())
    for path in files:
        maps, tops = [], []
        for decode in ({}, {"min_short_side": preprocess.decode_short_side, "min_long_side": OUTPUT_SIDE}):
            image = load_image(path, **decode)
            explanation = explainer.explain(np.asarray(image))
            height, width = output_size(*original_size(image))
            maps.append(preprocess.map_on_picture(explanation.maps[0, 0], height, width, "full"))
            tops.append(int(explanation.classes[0, 0]))
        same += tops[0] == tops[1]
        largest = max(largest, float(np.abs(maps[0] - maps[1]).max()))
    return same, len(files), largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--head", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sources = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.count]
    if not sources:
        raise SystemExit(f"{args.folder}: no JPEG photos")

    from tame_core import Explainer
    from tame_core.cli import explain as explain_cli

    explainer = Explainer.load(args.head, device=args.device)
    explain_cli.explainer_from = lambda _args: explainer  # start-up (model load) once, outside the timings
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        big, small = make_photos(sources, root)
        megapixels = np.mean([np.prod(Image.open(p).size) for p in big.iterdir()]) / 1e6
        print(f"{len(sources)} photos: {megapixels:.1f} MP JPEGs ({sum(p.stat().st_size for p in big.iterdir()) / len(sources) / 1e6:.1f} MB each) against 256 px; {torch.get_num_threads()} threads, device {args.device}")
        for folder in (big, small):  # warm-up: first calls, file cache
            explain_seconds(folder, root / "out")
        times: dict[str, list[float]] = {"12 MP": [], "256 px": []}
        for _ in range(args.repeats):  # in turns, so a change of load hits both alike
            times["12 MP"].append(explain_seconds(big, root / "out-big"))
            times["256 px"].append(explain_seconds(small, root / "out-small"))
        rates = {name: len(sources) / float(np.median(values)) for name, values in times.items()}
        for name, folder in (("12 MP", "out-big"), ("256 px", "out-small")):
            written = sum(p.stat().st_size for p in (root / folder).iterdir()) / len(sources)
            print(f"{name:>7}: {rates[name]:6.2f} images/s (median of {args.repeats}), {written / 1e6:.2f} MB written per photo")
        print(f"ratio 12 MP / 256 px: {rates['12 MP'] / rates['256 px']:.2f} (target >= 0.5)")
        same, total, largest = decode_agreement(explainer, big)
        print(f"draft against full decode of the 12 MP files: top-1 agrees on {same}/{total}; largest map difference {largest:.4f} (maps in [0, 1])")


if __name__ == "__main__":
    sys.exit(main())
