"""Cost of one TAME explanation against one plain backbone forward, and memory with/without class selection.

    python benchmarks/bench_explain.py [--head PATH] [--device cpu] [--repeats 30]

Part 1 times, side by side in one run on the same inputs, (a) a plain backbone forward and (b) a full
explanation (forward with taps + head + top-1 map at input size), and prints medians and their ratio;
also a class switch (head only, cached features).

Part 2 runs a batch of 32 in fresh processes and prints each step's peak memory above what was in use
before it (CPU: the resident set's high-water mark, reset through /proc; CUDA: max allocated): a plain
forward, an explanation with class selection (only the requested fuser rows are computed) and one
without (all 1000 class maps computed, then the requested one taken).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from timing import median_seconds


def _explainer(head: str | None, device: str):
    from tame_core import Explainer

    return Explainer.load(head, device=device)


def speed(args: argparse.Namespace) -> None:
    explainer = _explainer(args.head, args.device)
    torch.manual_seed(0)
    for batch in (1, 32):
        inputs = torch.rand(batch, 3, 224, 224, device=args.device)
        with torch.no_grad():
            forward = median_seconds(lambda: explainer.backbone(inputs), args.repeats, args.device, warmup=3)
        explain = median_seconds(lambda: explainer.explain_inputs(inputs), args.repeats, args.device, warmup=3)
        cached = explainer.explain_inputs(inputs)
        switch = median_seconds(lambda: cached.with_classes(cached.logits.topk(2, 1).indices[:, 1]), args.repeats, args.device, warmup=3)
        toggle = median_seconds(lambda: cached.with_branches([True, False, True][: explainer.head.num_branches]), args.repeats, args.device, warmup=3)
        print(
            f"batch {batch:>2} on {args.device}: backbone forward {forward * 1e3:8.2f} ms | explanation "
            f"{explain * 1e3:8.2f} ms (x{explain / forward:.2f} of the forward) | class switch {switch * 1e3:6.2f} ms "
            f"| branch toggle {toggle * 1e3:6.2f} ms  (medians of {args.repeats})"
        )


def memory_child(mode: str, head: str | None, device: str) -> None:
    """One measurement in a fresh process: prints JSON with the step's peak memory in MiB."""
    explainer = _explainer(head, device)
    inputs = torch.rand(32, 3, 224, 224, device=device)
    with torch.no_grad():
        step = _steps(explainer, inputs, device)[mode]
        step()  # warm up kernels and the allocator
        start = _reset_peak(device)
        step()
        peak = _peak(device)
    print(json.dumps({"mode": mode, "start": start, "peak": peak}))


def _steps(explainer, inputs: torch.Tensor, device: str) -> dict:
    from tame_core.maps import minmax_normalize, resize_maps

    def all_classes() -> None:  # what a head without class selection must do: every map, then pick top-1
        logits, features = explainer.features(inputs)
        every = explainer.head.fuse(features)  # (32, 1000, h, w)
        chosen = every[torch.arange(inputs.shape[0], device=device), logits.argmax(1)][:, None]
        minmax_normalize(resize_maps(chosen, inputs.shape[-2:]))

    logits, features = explainer.features(inputs)
    top1 = logits.argmax(1)[:, None]

    def head_all_classes() -> None:
        every = explainer.head.fuse(features)
        chosen = every.gather(1, top1[:, :, None, None].expand(-1, -1, *every.shape[-2:]))
        minmax_normalize(resize_maps(chosen, inputs.shape[-2:]))

    return {
        "forward": lambda: explainer.backbone(inputs),
        "selected": lambda: explainer.explain_inputs(inputs),
        "all_classes": all_classes,
        "head_selected": lambda: explainer.maps_from_features(features, top1, None, inputs.shape[-2:]),
        "head_all_classes": head_all_classes,
    }


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
    for mode in ("forward", "selected", "all_classes", "head_selected", "head_all_classes"):
        command = [sys.executable, __file__, "--memory-child", mode, "--device", args.device]
        if args.head:
            command += ["--head", args.head]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        results[mode] = result["peak"] - result["start"]
    kind = "CUDA allocated" if args.device.startswith("cuda") else "resident set, peak reset before the step"
    print(f"batch 32 on {args.device}: peak memory of the step above what was in use before it ({kind})")
    for mode, label in (
        ("forward", "plain backbone forward"),
        ("selected", "explain, with class selection"),
        ("all_classes", "explain, without class selection"),
        ("head_selected", "head stage only, with selection"),
        ("head_all_classes", "head stage only, without selection"),
    ):
        print(f"  {label:<34} {results[mode]:8.1f} MiB")
    for prefix, name in (("", "whole explanation"), ("head_", "head stage")):
        with_selection, without = results[f"{prefix}selected"], results[f"{prefix}all_classes"]
        if with_selection > 0:
            print(f"  {name}: without / with class selection x{without / with_selection:.1f}")


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
    memory(args)


if __name__ == "__main__":
    main()
