"""TAME against a plain forward and every baseline; metric costs against their forwards; ROAD against pytorch-grad-cam.

    python benchmarks/bench_methods.py [--images DIR] [--count 8] [--head PATH|untrained] [--device cpu]
        [--methods tame,gradcam,...] [--rise-masks 4000] [--steps 50] [--repeats 3]

Everything runs side by side in one process on the same images, model and device, and prints
ratios of medians (over ``--repeats`` timed runs after one warm-up):

1. a plain backbone forward of the batch; TAME's explanation (x the forward); each baseline (x TAME),
   with its forward/backward passes per image counted by hooks;
2. deletion + insertion curves: the metric's wall time against the time of its forwards alone (the
   same number of images through the model in the same batch size, inputs prepared beforehand);
3. ROAD (MoRF and LeRF at 10..90% removed): ours (batched torch imputation) against pytorch-grad-cam's
   ``ROADMostRelevantFirstAverage``/``ROADLeastRelevantFirstAverage`` (scipy, per image) on the same maps.

Without ``--images`` the batch is scikit-image's CC0 photos (repeated to ``--count``). The head only
changes the maps, not the cost, so an untrained one is used when no trained head is available.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Callable

import numpy as np
import torch
from timing import in_turns, median_seconds


def load_explainer(head: str | None, backbone: str, device: str):
    from tame_core import Explainer, TAMEHead, load_backbone
    from tame_core.errors import CheckpointError
    from tame_core.taps import check_layers

    if head != "untrained":
        try:
            return Explainer.load(head, backbone, device=device), head or "bundled"
        except CheckpointError as error:
            if head is not None:
                raise
            print(f"(no bundled head: {error}; using an untrained head)")
    net = load_backbone(backbone, device=device)
    torch.manual_seed(0)
    channels = [info.channels for info in check_layers(net, net.default_layers)]
    return Explainer(net, TAMEHead(channels, net.num_classes).eval()), "untrained"


def load_batch(args: argparse.Namespace, explainer) -> torch.Tensor:
    from tame_core.images import find_images, image_to_tensor, load_image

    if args.images:
        pictures = [image_to_tensor(load_image(path)) for path in find_images(args.images)[: args.count]]
    else:
        from skimage import data

        photos = [getattr(data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")]
        pictures = [torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1) for i in range(args.count)]
    return explainer.backbone.preprocess.batch(pictures, "crop", explainer.device)


def bench_methods(args, explainer, inputs, classes) -> dict[str, torch.Tensor]:
    """Times of a plain forward and of each method. The quick ones are timed in turns (forward, TAME,
    Grad-CAM, ..., forward, TAME, ...), so a change in machine load hits them alike; the slow ones once."""
    from tame_core.methods import explain_with

    device, backbone, batch = explainer.device, explainer.backbone, inputs.shape[0]
    slow = {"scorecam", "ablationcam", "rise"} if device.type == "cpu" else set()
    results: dict[str, object] = {}

    def runner(method: str) -> Callable[[], None]:
        options = {"masks": args.rise_masks} if method == "rise" else {}

        def run() -> None:
            if method == "forward":
                with torch.no_grad():
                    backbone(inputs)
            else:
                results[method] = explain_with(explainer, inputs, classes, method, **options)

        return run

    quick = ["forward", *(m for m in args.methods if m not in slow)]
    seconds = in_turns({name: runner(name) for name in quick}, args.repeats, device)
    for method in args.methods:
        if method in slow:
            seconds[method] = median_seconds(runner(method), 1, device, warmup=0)

    forward = seconds["forward"]
    print(f"\n1. explanations of {batch} images: medians of {args.repeats} runs taken in turns after a warm-up"
          f"{'; Score-CAM, Ablation-CAM and RISE: one run each' if slow else ''}")
    print(f"   {'plain forward':<12} {forward * 1e3 / batch:10.1f} ms/img")
    for method in args.methods:
        result = results[method]
        if method == "tame":
            relation = f"x{seconds[method] / forward:6.2f} of a plain forward"
        else:
            relation = f"x{seconds[method] / seconds['tame']:8.1f} of TAME" if "tame" in seconds else ""
        extra = f" (masks={args.rise_masks})" if method == "rise" else ""
        print(f"   {method:<12} {seconds[method] * 1e3 / batch:10.1f} ms/img  {relation:<28} passes/img: "
              f"{result.forward_passes:g} forward, {result.backward_passes:g} backward{extra}")
    return {method: result.maps for method, result in results.items()}


def bench_curves(args, explainer, inputs, classes, saliency) -> None:
    from tame_core.metrics import deletion_insertion
    from tame_core.batching import check_batch_size

    device, backbone, batch = explainer.device, explainer.backbone, inputs.shape[0]
    size = check_batch_size(args.metric_batch_size, device)
    rows = 2 * batch * (args.steps + 1)
    prepared = inputs.repeat((size + batch - 1) // batch, 1, 1, 1)[:size].contiguous()
    chunks = [min(size, rows - start) for start in range(0, rows, size)]

    def forwards_alone() -> None:
        with torch.no_grad():
            for count in chunks:
                backbone(prepared[:count]).softmax(dim=-1)

    def curves() -> None:
        deletion_insertion(backbone, inputs, saliency, classes, args.steps, None, size)

    times = in_turns({"curves": curves, "alone": forwards_alone}, args.repeats, device)
    metric, alone = times["curves"], times["alone"]
    print(f"\n2. deletion + insertion curves, {args.steps} steps, RISE's fills (mean colour, blur): {rows} perturbed images in batches of {size}")
    print(f"   metric {metric:8.2f} s | its forwards alone {alone:8.2f} s | ratio x{metric / alone:.2f}")


def bench_road(args, explainer, inputs, classes, saliency) -> None:
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from tame_core.maps import minmax_normalize
    from tame_core.metrics import road
    from tame_core.batching import check_batch_size
    from tame_core.metrics.base import DEFAULT_ROAD_PERCENTAGES

    device, backbone, batch = explainer.device, explainer.backbone, inputs.shape[0]
    size = check_batch_size(args.metric_batch_size, device)
    levels = DEFAULT_ROAD_PERCENTAGES
    kept = [100 - p for p in levels]  # pytorch-grad-cam's "percentile" is the share of pixels kept
    ours_results = {}

    def ours() -> None:
        for order in ("morf", "lerf"):
            ours_results[order] = road(backbone, inputs, saliency, classes, levels, order, size)

    cams = minmax_normalize(saliency).cpu().numpy().astype(np.float32)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes.tolist()]
    theirs_results = {}

    def theirs() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for order, metric in (("morf", ROADMostRelevantFirstAverage(kept)), ("lerf", ROADLeastRelevantFirstAverage(kept))):
                theirs_results[order] = metric(inputs, cams, targets, backbone)

    ours_time = median_seconds(ours, args.repeats, device)
    theirs_time = median_seconds(theirs, max(1, min(args.repeats, 2)), device, warmup=0)
    print(f"\n3. ROAD, MoRF + LeRF at {', '.join(map(str, levels))}% removed, {batch} images")
    print(f"   ours {ours_time:8.2f} s | pytorch-grad-cam {theirs_time:8.2f} s | ours is x{theirs_time / ours_time:.1f} faster")
    for order in ("morf", "lerf"):
        change = float(ours_results[order].prob_change.mean())
        print(f"   {order}: mean probability change, ours {change:+.4f} | pytorch-grad-cam {float(np.mean(theirs_results[order])):+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="folder of images (default: scikit-image photos)")
    parser.add_argument("--count", type=int, default=8, help="images in the batch")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--head", help="head checkpoint (default: the bundled one), or 'untrained'")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=None, help="comma-separated (default: all)")
    parser.add_argument("--rise-masks", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=50, help="deletion/insertion steps")
    parser.add_argument("--metric-batch-size", type=int, help="perturbed images per forward (default: the metrics')")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: methods, curves, road")
    args = parser.parse_args()

    from tame_core.methods import list_methods

    args.methods = args.methods.split(",") if args.methods else list_methods()
    if "tame" in args.methods:
        args.methods = ["tame", *(m for m in args.methods if m != "tame")]
    skip = set(filter(None, args.skip.split(",")))
    explainer, head = load_explainer(args.head, args.backbone, args.device)
    inputs = load_batch(args, explainer)
    with torch.no_grad():
        classes = explainer.backbone(inputs).argmax(dim=1)
    print(f"{args.backbone} ({head} head) on {explainer.device} with {torch.get_num_threads()} threads: "
          f"{inputs.shape[0]} images of {inputs.shape[-2]}x{inputs.shape[-1]}, explained for their top-1 class")
    maps = {} if "methods" in skip else bench_methods(args, explainer, inputs, classes)
    saliency = maps.get("tame")
    if saliency is None:
        saliency = explainer.explain(inputs, classes[:, None], geometry="input").maps[:, 0]
    if "curves" not in skip:
        bench_curves(args, explainer, inputs, classes, saliency)
    if "road" not in skip:
        bench_road(args, explainer, inputs, classes, saliency)


if __name__ == "__main__":
    main()
