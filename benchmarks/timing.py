"""Timing shared by the benchmarks: wall-clock samples with the device synchronised around each call,
so that asynchronous CUDA work is counted where it happens."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def samples(fn: Callable[[], object], repeats: int, device: str | torch.device = "cpu", warmup: int = 0) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, device: str | torch.device = "cpu", warmup: int = 1) -> float:
    return statistics.median(samples(fn, repeats, device, warmup))


def in_turns(functions: dict[str, Callable[[], object]], repeats: int, device: str | torch.device = "cpu") -> dict[str, float]:
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...) after one warm-up each,
    so that a change in machine load during the run affects all of them alike."""
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].extend(samples(fn, 1, device))
    return {name: statistics.median(values) for name, values in times.items()}
