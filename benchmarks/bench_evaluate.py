"""Where ``tame evaluate``'s time goes: backbone passes, ROAD's imputation, everything else.

    python benchmarks/bench_evaluate.py [--images DIR] [--count 16] [--methods tame,gradcam] [--steps 50]

Runs the evaluation (AD/IC, ROAD, deletion/insertion curves) on the same images twice, with and
without ROAD. During each run, hooks record every backbone forward (its batch size, and whether a
backward went through it) and time ROAD's imputation. Then the same passes are replayed alone (random
inputs of the recorded batch sizes, the recorded backwards included), and the benchmark prints the run
time against that replay: what the run spends beyond the passes it cannot avoid. The replay takes its
inputs in turn from a pool larger than the cache, as every pass of a run meets new images; the replay
on one input kept in cache is printed beside it. Without ``--images``
the images are scikit-image's CC0 photos, each also flipped and cropped, up to ``--count``.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from timing import sync

from tame_core import Explainer
from tame_core.evaluation import EvaluationConfig, evaluate
road_module = importlib.import_module("tame_core.metrics.road")  # the module (the package re-exports its function)


class PassRecorder:
    """Forward hooks on the backbone: each call's batch size, its wall time, and whether it needed a backward."""

    def __init__(self, net: torch.nn.Module, device: torch.device) -> None:
        self.net, self.device = net, device
        self.calls: list[list] = []  # [batch, seconds, backward]
        self._started = 0.0

    def __enter__(self) -> "PassRecorder":
        self._handles = [self.net.register_forward_pre_hook(self._before), self.net.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, module, args) -> None:
        sync(self.device)
        self._started = time.perf_counter()

    def _after(self, module, args, output) -> None:
        sync(self.device)
        call = [args[0].shape[0], time.perf_counter() - self._started, False]
        self.calls.append(call)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad, call=call: call.__setitem__(2, True))

    @property
    def forward_seconds(self) -> float:
        return sum(call[1] for call in self.calls)


@contextmanager
def timed_imputation(totals: dict[str, float]):
    """Time every call of ROAD's imputer."""
    original = road_module.noisy_linear_impute

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals["imputation"] += time.perf_counter() - started

    road_module.noisy_linear_impute = timed
    try:
        yield
    finally:
        road_module.noisy_linear_impute = original


#: Bytes of distinct inputs the replay cycles through: more than a CPU's last-level cache, so no replayed
#: pass finds its input already cached, as no pass in a run does (each gets freshly perturbed images).
REPLAY_POOL_BYTES = 128 * 2**20


def replay(explainer: Explainer, calls: list[list], fresh: bool = True) -> float:
    """The recorded passes alone: the same batch sizes forward (and backward where one was taken), on
    inputs taken in turn from a pool larger than the cache (``fresh``) or on one input used again and again."""
    backbone, device = explainer.backbone, explainer.device
    size = tuple(backbone.preprocess.input_size)
    largest = max(call[0] for call in calls)
    count = max(1, REPLAY_POOL_BYTES // (largest * 3 * size[0] * size[1] * 4)) if fresh else 1
    pool = [torch.rand(largest, 3, *size, device=device) for _ in range(count)]
    sync(device)
    started = time.perf_counter()
    for index, (batch, _, backward) in enumerate(calls):
        inputs = pool[index % count]
        if backward:
            x = inputs[:batch].clone().requires_grad_(True)
            backbone(x).sum().backward()
        else:
            with torch.no_grad():
                backbone(inputs[:batch])
    sync(device)
    return time.perf_counter() - started


def write_images(folder: Path, count: int) -> None:
    from skimage import data

    photos = [getattr(data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")]
    for index in range(count):
        picture = Image.fromarray(photos[index % len(photos)])
        variant = index // len(photos)
        if variant % 2:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if variant >= 2:
            width, height = picture.size
            picture = picture.crop((width // 8, height // 8, width - width // 8, height - height // 8))
        picture.save(folder / f"photo{index:03d}.png")


def run(explainer: Explainer, folder: Path, args: argparse.Namespace, metrics: list[str]) -> None:
    totals = {"imputation": 0.0}
    config = EvaluationConfig(folder, tuple(args.methods), metrics=tuple(metrics), steps=args.steps, batch_size=args.batch_size)
    evaluate(explainer, replace(config, limit=4))  # warm-up
    with PassRecorder(explainer.backbone.net, explainer.device) as recorder, timed_imputation(totals):
        sync(explainer.device)
        started = time.perf_counter()
        evaluate(explainer, replace(config, limit=args.count))
        sync(explainer.device)
        total = time.perf_counter() - started
    alone, reused = replay(explainer, recorder.calls), replay(explainer, recorder.calls, fresh=False)
    images = sum(call[0] for call in recorder.calls)
    backwards = sum(call[0] for call in recorder.calls if call[2])
    other = total - recorder.forward_seconds - totals["imputation"]
    print(f"{'+'.join(metrics)} for {'+'.join(args.methods)} on {args.count} images: {total:7.2f} s")
    print(f"  passes in the run: {len(recorder.calls)} calls, {images} images forward, {backwards} of them backward too")
    print(f"  split: forwards {recorder.forward_seconds:7.2f} s | imputation {totals['imputation']:7.2f} s | "
          f"everything else (backwards included) {other:7.2f} s")
    print(f"  the same passes alone (replayed on inputs not in cache): {alone:7.2f} s | run / passes alone: x{total / alone:.2f}")
    print(f"  (replayed on one input used again and again, always in cache: {reused:7.2f} s | x{total / reused:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="folder of images (default: scikit-image photos)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--head", help="head checkpoint (default: the bundled one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default="tame,gradcam")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    explainer = Explainer.load(args.head, device=args.device)
    print(f"{explainer.backbone.name} on {explainer.device} with {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, curves of {args.steps} steps")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.images) if args.images else Path(temporary)
        if not args.images:
            write_images(folder, args.count)
        run(explainer, folder, args, ["adic", "road", "curves"])
        run(explainer, folder, args, ["adic", "curves"])


if __name__ == "__main__":
    main()
