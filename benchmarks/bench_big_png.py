"""Peak memory of 88-megapixel PNGs: decoded whole (the old path) against shrunk right after decode, side by side.

    python benchmarks/bench_big_png.py [--count 8] [--side 9400] [--cli]

Writes ``--count`` PNGs of ``--side`` x ``--side`` pixels (9400 x 9400 = 88.4 MP, just under the 89 MP limit)
in RGB, RGBA and 16-bit gray, a smooth picture with noise. For each mode and each path, a fresh Python process
loads the pictures one after another as the CLI's readers do and keeps each one's model input (the batch);
the peak resident memory above the process's start (after imports; Linux's VmHWM, reset by ``clear_refs``) is printed for one picture and for all
``--count``. "whole" is ``load_image(path)`` (every conversion at full size), "reduced" is
``load_image(path, min_short_side=Preprocess.decode_short_side)`` (what evaluate, train, explain and the app
ask for). With ``--cli``, ``tame explain`` on the RGB pictures reports its own peak as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
import torch
from tame_core.images import image_to_tensor, load_image
from tame_core.preprocessing import Preprocess

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def peak_mb():
    return status_mb("VmHWM")

with open("/proc/self/clear_refs", "w") as clear:  # the peak so far (imports) is forgotten: VmHWM = VmRSS now
    clear.write("5")

paths, mode = json.loads(sys.argv[1]), sys.argv[2]
preprocess = Preprocess(input_size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
decode = {} if mode == "whole" else {"min_short_side": preprocess.decode_short_side}
start = peak_mb()
batch, peaks = [], []
for path in paths:
    image = load_image(path, **decode)
    batch.append(preprocess.to_input(image_to_tensor(image), "crop"))
    del image
    peaks.append(peak_mb() - start)
print(json.dumps({"one": peaks[0], "all": peaks[-1], "inputs": list(torch.stack(batch).shape)}))
"""


def make_pngs(folder: Path, count: int, side: int, mode: str) -> list[Path]:
    """``count`` PNGs: a gradient with noise (compresses, unlike pure noise), each a little different."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    smooth = np.add.outer(ramp, ramp) / 2
    paths = []
    for index in range(count):
        noise = rng.integers(0, 8, size=(side, side), dtype=np.uint8)
        gray = (smooth * 240).astype(np.uint8) + noise + index
        if mode == "RGB":
            picture = Image.fromarray(np.dstack([gray, gray[::-1], gray[:, ::-1]]))
        elif mode == "RGBA":
            picture = Image.fromarray(np.dstack([gray, gray[::-1], gray[:, ::-1], 255 - gray]))
        else:
            picture = Image.fromarray(gray.astype(np.uint16) * 257)  # mode I;16
        path = folder / f"{mode.replace(';', '')}-{index}.png"
        picture.save(path, compress_level=1)
        paths.append(path)
    return paths


def measure(paths: list[Path], mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]), mode],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def cli_peak(paths: list[Path], out: Path) -> tuple[float, float]:
    """Peak resident memory (MB) and seconds of ``tame explain`` on ``paths`` with the embedded default model."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "tame_core", "explain", *map(str, paths), "--out", str(out),
                              "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, _, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--side", type=int, default=9400)
    parser.add_argument("--cli", action="store_true", help="also run tame explain on the RGB pictures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        print(f"{args.count} PNGs of {args.side}x{args.side} = {args.side ** 2 / 1e6:.1f} MP each; peak MB above start")
        print(f"{'mode':6} {'path':8} {'one picture':>12} {f'all {args.count}':>10}")
        for mode in ("RGB", "RGBA", "I;16"):
            paths = make_pngs(folder, args.count, args.side, mode)
            results = {path: measure(paths, path) for path in ("whole", "reduced")}
            for path, result in results.items():
                print(f"{mode:6} {path:8} {result['one']:12.0f} {result['all']:10.0f}")
            print(f"{mode:6} {'ratio':8} {results['whole']['one'] / results['reduced']['one']:11.1f}x "
                  f"{results['whole']['all'] / results['reduced']['all']:9.1f}x  (whole / reduced)")
            if args.cli and mode == "RGB":
                peak, seconds = cli_peak(paths, folder / "explained")
                print(f"tame explain on the {args.count} RGB PNGs: peak {peak:.0f} MB resident (whole process), {seconds:.0f} s")
            for path in paths:
                path.unlink()


if __name__ == "__main__":
    main()
