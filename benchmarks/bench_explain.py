"""Cost of one TAME explanation against one plain backbone forward; memory held and peak memory.

    python benchmarks/bench_explain.py [--head PATH] [--device cpu] [--repeats 30]

Part 1 times, side by side in one run on the same inputs (in turns, medians), (a) a plain backbone
forward and (b) a full explanation (forward with taps + head + top-1 map at input size), and prints
their ratio; also a class switch and a branch toggle (head only, on the cached branch outputs), and
the branches' 1x1 convolutions alone: the least any explanation with this head must add to a forward.

Part 2 prints the memory an explanation keeps per image to answer another class or branch mask: the
branch outputs at their native sizes (what the head fuses from), against what the papers' order
(every branch upsampled to the fused resolution, then concatenated) would keep.

Part 3 runs a batch of 32 in fresh processes and prints each step's peak memory above what was in use
before it (CPU: the resident set's high-water mark, reset through /proc; CUDA: max allocated): a plain
forward, an explanation of the top-1 class, and one of all 1000 classes, against the size of the maps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from timing import in_turns


def _explainer(head: str | None, device: str):
    from tame_core import Explainer

    return Explainer.load(head, device=device)


def speed(args: argparse.Namespace) -> None:
    explainer = _explainer(args.head, args.device)
    torch.manual_seed(0)
    branches = explainer.head.num_branches
    for batch in (1, 32):
        inputs = torch.rand(batch, 3, 224, 224, device=args.device)
        cached = explainer.explain(inputs, geometry="input")
        second = cached.logits.topk(2, 1).indices[:, 1]
        mask = [index != 1 for index in range(branches)]

        def forward() -> None:
            with torch.no_grad():
                explainer.backbone(inputs)

        def branch_convs() -> None:
            """The papers' head cannot cost less than its branches' 1x1 convolutions (the rest is small)."""
            with torch.no_grad():
                for branch, features in zip(explainer.head.branches, cached.branch_features):
                    branch.conv(features)

        times = in_turns({
            "forward": forward,
            "explain": lambda: explainer.explain(inputs, geometry="input"),
            "switch": lambda: cached.with_classes(second),
            "toggle": lambda: cached.with_branches(mask),
            "convs": branch_convs,
        }, args.repeats, args.device)
        print(
            f"batch {batch:>2} on {args.device}: backbone forward {times['forward'] * 1e3:8.2f} ms | explanation "
            f"{times['explain'] * 1e3:8.2f} ms (x{times['explain'] / times['forward']:.3f} of the forward) | class switch "
            f"{times['switch'] * 1e3:6.2f} ms | branch toggle {times['toggle'] * 1e3:6.2f} ms  (medians of {args.repeats}, in turns)"
        )
        print(
            f"          the branches' 1x1 convolutions alone {times['convs'] * 1e3:8.2f} ms: no explanation with this head "
            f"can cost under x{1 + times['convs'] / times['forward']:.3f} of the forward"
        )


def held(args: argparse.Namespace) -> None:
    explainer = _explainer(args.head, args.device)
    inputs = torch.rand(1, 3, 224, 224, device=args.device)
    explanation = explainer.explain(inputs, geometry="input")
    native = sum(o.numel() * o.element_size() for o in explanation.branch_features)
    height, width = explainer.head.resolution(explanation.branch_features[0].shape[-2:])
    upsampled = sum(explainer.head.channels) * height * width * 4
    shapes = ", ".join(f"{o.shape[1]}x{o.shape[2]}x{o.shape[3]}" for o in explanation.branch_features)
    print(f"memory held per cached explanation (one image, {explainer.layers}):")
    print(f"  branch outputs at native size ({shapes}): {native / 2**20:6.3f} MiB")
    print(f"  the papers' order, all {sum(explainer.head.channels)} channels at {height}x{width}:       {upsampled / 2**20:6.3f} MiB  (x{upsampled / native:.1f})")
    print(f"  beside them: the model input {explanation.inputs.numel() * 4 / 2**20:.3f} MiB, the top-1 map {explanation.maps.numel() * 4 / 2**20:.3f} MiB")


def memory_child(mode: str, head: str | None, device: str) -> None:
    """One measurement in a fresh process: prints JSON with the step's peak memory in MiB."""
    explainer = _explainer(head, device)
    inputs = torch.rand(32, 3, 224, 224, device=device)
    every = torch.arange(explainer.backbone.num_classes, device=device).expand(inputs.shape[0], -1)
    steps = {
        "forward": lambda: explainer.backbone(inputs),
        "top1": lambda: explainer.explain(inputs, geometry="input"),
        "all_classes": lambda: explainer.explain(inputs, classes=every, geometry="input"),
    }
    with torch.no_grad():
        result = steps[mode]()  # warm up kernels and the allocator
        maps = getattr(result, "maps", None)
        del result
        start = _reset_peak(device)
        steps[mode]()
        peak = _peak(device)
    print(json.dumps({"mode": mode, "start": start, "peak": peak, "maps": 0 if maps is None else maps.numel() * 4 / 2**20}))


def _reset_peak(device: str) -> float:
    """Start a new peak measurement; returns the memory in use now (MiB)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/clear_refs", "w") as handle:  # Linux: reset the peak resident set size (VmHWM)
        handle.write("5")
    return _status_mib("VmRSS")


def _peak(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory(args: argparse.Namespace) -> None:
    results = {}
    for mode in ("forward", "top1", "all_classes"):
        command = [sys.executable, __file__, "--memory-child", mode, "--device", args.device]
        if args.head:
            command += ["--head", args.head]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
    kind = "CUDA allocated" if args.device.startswith("cuda") else "resident set, peak reset before the step"
    print(f"batch 32 on {args.device}: peak memory of the step above what was in use before it ({kind})")
    rise = {mode: r["peak"] - r["start"] for mode, r in results.items()}
    print(f"  plain backbone forward              {rise['forward']:9.1f} MiB")
    print(f"  explain, top-1 class                {rise['top1']:9.1f} MiB  (its maps: {results['top1']['maps']:.1f} MiB)")
    print(f"  explain, all 1000 classes           {rise['all_classes']:9.1f} MiB  (its maps: {results['all_classes']['maps']:.1f} MiB)")
    extra = rise["all_classes"] - results["all_classes"]["maps"] - (rise["top1"] - results["top1"]["maps"])
    print(f"  all classes minus their maps, against top-1 minus its map: {extra:+.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="head checkpoint (default: the bundled head)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.head, args.device)
        return
    speed(args)
    held(args)
    memory(args)


if __name__ == "__main__":
    main()
