"""``tame evaluate --data DIR``: the papers' faithfulness table for TAME and the comparison methods on a folder.

Prints AD/IC at 100/50/15%, ROAD MoRF/LeRF, deletion/insertion AUC, milliseconds and forward passes
per image for each method, and writes ``results.json``, ``results.csv`` (the means) and ``per_image.csv``
(one row per image and method, keyed by the path relative to ``--data``) into ``--out``; ``--compare A,B``
adds the paired difference of two methods on every metric with a 95 % bootstrap interval over images.
The run saves its per-image results after every batch: after Ctrl-C, the same command with ``--resume``
continues where it stopped, and redoes no finished image. On a CPU shared with other jobs, ``OMP_NUM_THREADS=1`` can make a run
many times faster (the solver behind ROAD is many small tensor operations).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import OutputLock
from ..errors import EvaluationError
from .common import MAX_BATCH, add_model_options, explainer_from, int_between, positive_int, seed, writable_folder

STATE_FILE = "evaluation_state.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..evaluation import METRIC_GROUPS
    from ..methods import list_methods
    from ..evaluation.config import MAX_CURVE_STEPS
    from ..metrics.curves import DEFAULT_STEPS, FILLS, fills_text
    from ..splits import SPLITS

    parser = subparsers.add_parser("evaluate", help="measure TAME and comparison methods: AD/IC, ROAD, deletion/insertion", description=__doc__)
    add_model_options(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, type=Path, help="folder of images (recursive)")
    data.add_argument("--split", choices=SPLITS, default="all",
                      help="heldout: only ImageNet classes i with i %% 5 == 4 (by the WordNet id in the file name)")
    data.add_argument("--list", dest="list_file", type=Path, help="file naming the images to use, one path per line (relative to --data)")
    data.add_argument("--limit", type=positive_int, help="only the first N images")
    run = parser.add_argument_group("methods and metrics")
    run.add_argument("--methods", default=",".join(list_methods()), help=f"comma-separated (default: all: {','.join(list_methods())})")
    run.add_argument("--metrics", default=",".join(METRIC_GROUPS), help=f"comma-separated groups (default: {','.join(METRIC_GROUPS)})")
    run.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="a method option, e.g. rise.masks=1000 or gradcam.layer=blocks.5 (repeatable)")
    run.add_argument("--method-limit", action="append", default=[], metavar="METHOD=N",
                     help="run a slow method on the first N images only, e.g. scorecam=50 (repeatable)")
    run.add_argument("--metric-limit", action="append", default=[], metavar="GROUP=N",
                     help="compute a metric group on the first N images only, e.g. road=50 (repeatable)")
    run.add_argument("--steps", type=int_between(1, MAX_CURVE_STEPS), default=DEFAULT_STEPS, help=f"deletion/insertion steps (default {DEFAULT_STEPS})")
    run.add_argument("--baseline", metavar="CURVE=FILL,...",
                     help=f"each curve's fill, one of {', '.join(FILLS)}: mean = the classifier's mean colour (zeros of the "
                          f"normalised input), black, blur = RISE's (11 x 11, sigma 5); one fill sets both curves "
                          f"(default RISE's: {fills_text()})")
    run.add_argument("--batch-size", type=int_between(1, MAX_BATCH), default=8, help="images explained per batch")
    run.add_argument("--metric-batch-size", type=int_between(1, MAX_BATCH), help="perturbed images per forward (default: 4 on CPU, 256 on GPU)")
    run.add_argument("--seed", type=seed, default=0, help="seed of the ROAD noise (0 to 2**32-1)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=Path("."), help="folder for results.json and results.csv (default: .)")
    output.add_argument("--resume", action="store_true", help=f"continue the run saved in --out/{STATE_FILE}")
    output.add_argument("--compare", metavar="A,B", help="also print method A against B on every metric: paired difference, 95%% bootstrap interval, verdict")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import EvaluationConfig

    config = EvaluationConfig(  # checked now, before the model loads
        data=args.data, methods=tuple(_names(args.methods)), split=args.split, list_file=args.list_file,
        limit=args.limit, batch_size=args.batch_size, metrics=tuple(_names(args.metrics)), steps=args.steps,
        baseline=args.baseline, method_options=parse_options(args.option),
        method_limits=_limits(args.method_limit, "--method-limit"), metric_limits=_limits(args.metric_limit, "--metric-limit"),
        metric_batch_size=args.metric_batch_size, seed=args.seed,
    )
    compared = _compared(args.compare, config.methods)
    writable_folder(args.out)  # now, not after the run: results and the resumable state go there
    from ..training.distributed import Distributed

    dist = Distributed.setup(args.device)  # under torchrun: this rank's device (LOCAL_RANK), gloo or NCCL
    try:
        state = state_file(args.out, dist.rank, dist.world)
        with OutputLock(state, "--out"):  # one run per state file: a second one is refused before it touches it
            return _run_rank(args, config, compared, dist, state)
    finally:
        dist.close()


def _run_rank(args: argparse.Namespace, config: Any, compared: tuple[str, str] | None, dist: Any, state: Path) -> int:
    """One process's part of ``tame evaluate`` (the only one without torchrun); rank 0 writes and prints."""
    from ..evaluation import evaluate

    args.device = str(dist.device)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0  # torchrun --max-restarts
    if args.resume or restarted:  # a restarted worker continues its own state, as --resume does
        others = sorted(p.name for p in args.out.glob("evaluation_state*.json") if p.name != state.name)
        if others and not state.exists():
            raise EvaluationError(
                f"--resume: {args.out} holds the state of a run with another number of processes ({others[0]}); "
                f"resume with that many, or start afresh without --resume"
            )
    elif state.exists():
        state.unlink()  # a fresh run; --resume keeps it
    explainer = explainer_from(args)
    disable = args.no_progress or not dist.is_main
    bar = tqdm(total=0, unit="img", desc="evaluate", file=sys.stderr, disable=disable, dynamic_ncols=True)

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = round(done, 1)  # a part of the image in flight, without 16 digits
        bar.set_postfix_str(message, refresh=True)

    try:
        report = evaluate(explainer, config, progress, state_path=state, dist=dist)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: the images done are saved in {state}; add --resume to continue", file=sys.stderr)
        raise
    bar.close()
    if not dist.is_main:
        return 0
    report.settings["head"] = str(args.head) if args.head else report.settings["head"]
    json_path, csv_path, rows_path = report.save(args.out)
    print(report.table())
    if compared:
        print()
        print(report.comparison_table(*compared))
    for skipped in report.skipped:
        print(f"skipped: {skipped}", file=sys.stderr)
    print(f"wrote {json_path}, {csv_path} and {rows_path}", file=sys.stderr)
    return 0


def state_file(out: Path, rank: int = 0, world: int = 1) -> Path:
    """This process's state file: one per rank under torchrun, so no two processes write one file."""
    return out / (STATE_FILE if world == 1 else f"evaluation_state.rank{rank}-of-{world}.json")


def _compared(text: str | None, methods: tuple[str, ...]) -> tuple[str, str] | None:
    """``"tame,gradcam"`` -> ``("tame", "gradcam")``, two different methods of the run."""
    if text is None:
        return None
    names = _names(text)
    if len(names) != 2 or names[0] == names[1]:
        raise EvaluationError(f"--compare {text!r} must name two different methods, e.g. tame,gradcam")
    missing = [name for name in names if name not in methods]
    if missing:
        raise EvaluationError(f"--compare: method '{missing[0]}' is not in --methods ({','.join(methods)})")
    return names[0], names[1]


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["rise.masks=1000", "gradcam.layer=blocks.5"]`` -> ``{"rise": {"masks": 1000}, "gradcam": {"layer": "blocks.5"}}``."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, value = _pair(item, "--option")
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise EvaluationError(f"--option {item!r} must look like METHOD.KEY=VALUE (e.g. rise.masks=1000)")
        options.setdefault(method, {})[name] = _value(value)
    return options


def _limits(items: list[str], flag: str) -> dict[str, int]:
    """``["scorecam=20"]`` -> ``{"scorecam": 20}``."""
    limits = {}
    for item in items:
        name, value = _pair(item, flag)
        number = _value(value)
        if not isinstance(number, int) or number < 0:
            raise EvaluationError(f"{flag} {item!r}: the limit must be a whole number of images")
        limits[name] = number
    return limits


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, equals, value = item.partition("=")
    if not equals or not key.strip() or not value.strip():
        raise EvaluationError(f"{flag} {item!r} must look like NAME=VALUE")
    return key.strip(), value.strip()


def _value(text: str) -> Any:
    """An option value: an int, a float, or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
