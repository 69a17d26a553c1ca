"""Training-step cost: one step of the head's training vs the irreducible 2 backbone forwards + 1 backward.

A training step needs a clean forward (targets and features, no graph), a forward of the masked image
with a graph, and a backward through the frozen backbone to the mask. Everything else (the head, the
B x B maps, the losses, the optimiser) is overhead; this prints how much, measured side by side on
the same batch, plus images per second.

    .venv/bin/python benchmarks/bench_training.py [--data ../shared/data/imagenet-samples] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import samples

from tame_core import load_backbone
from tame_core.head import FUSERS
from tame_core.images import find_images, image_to_tensor, load_image
from tame_core.taps import LayerTaps, check_layers
from tame_core.training.init import init_from_cam, new_head
from tame_core.training.step import batch_loss
from tame_core.training.trainer import parameter_groups


def batch_of(backbone, data: Path | None, size: int) -> torch.Tensor:
    if data is None:
        return torch.rand(size, 3, *backbone.preprocess.input_size, generator=torch.Generator().manual_seed(0))
    pictures = [image_to_tensor(load_image(p)) for p in find_images(data)[:size]]
    return backbone.preprocess.batch(pictures, "crop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--layers", nargs="+", help="default: the backbone's")
    parser.add_argument("--init", choices=("random", "cam"), default="random")
    parser.add_argument("--fuser", choices=FUSERS, default="class")
    parser.add_argument("--data", type=Path, help="folder of real images (default: random pixels)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    backbone = load_backbone(args.backbone)
    layers = list(args.layers or backbone.default_layers)
    inputs = batch_of(backbone, args.data, args.batch_size)
    head = new_head([i.channels for i in check_layers(backbone, layers)], backbone, fuser=args.fuser).train()
    if args.init == "cam":
        init_from_cam(head, backbone, layers, inputs)
    optimizer = torch.optim.SGD(parameter_groups(head, 5e-4), lr=1e-3, momentum=0.9, nesterov=True)
    taps = LayerTaps(backbone, layers)

    def training_step() -> None:
        terms = batch_loss(backbone, taps, head, inputs)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()

    def two_forwards_one_backward() -> None:
        with torch.no_grad():
            targets = backbone(inputs).argmax(dim=1)
        mask = torch.full((inputs.shape[0], 1, *inputs.shape[-2:]), 0.5, requires_grad=True)
        F.cross_entropy(backbone(inputs * mask), targets).backward()

    training_step(), two_forwards_one_backward()  # warm-up (allocator, oneDNN kernels)
    step_times, reference_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        step_times += samples(training_step, 1)
        reference_times += samples(two_forwards_one_backward, 1)
    step, reference = statistics.median(step_times), statistics.median(reference_times)
    print(f"backbone {backbone.name}, layers {layers}, init {args.init}, fuser {args.fuser}, batch {args.batch_size} at "
          f"{tuple(inputs.shape[-2:])}, {torch.get_num_threads()} threads, {args.repeats} rounds (median)")
    print(f"training step:                  {step * 1000:8.0f} ms  ({args.batch_size / step:6.1f} images/s)")
    print(f"2 forwards + 1 backward:        {reference * 1000:8.0f} ms  ({args.batch_size / reference:6.1f} images/s)")
    print(f"ratio step / (2 fwd + 1 bwd):   {step / reference:8.2f}")


if __name__ == "__main__":
    main()
