"""Estimated ÷ actual time of the app's long work (curves, Compare, evaluate, training), quiet and busy.

    python benchmarks/bench_estimates.py FOLDER [--images 8] [--phases quiet,busy]

Each piece of work runs as the app runs it (a :class:`~tame_core.studio.jobs.Job` around the same work
function) with the embedded default model. Two ratios are printed per piece:

* **before**: the estimate the page shows on its button (``curves_estimate``, ``compare_estimate``,
  ``evaluation_estimate``, ``training_cost``) ÷ the job's actual duration;
* **live**: the job's remaining-time estimate (:attr:`Job.remaining`: the rate over the later half of its progress) read once
  a quarter of the work is done ÷ the time that was actually left then.

"busy" repeats everything while two processes keep both cores busy (a neighbour on a shared machine). The
server measured its figures in the quiet phase; the busy phase first waits until each is
:data:`~tame_core.studio.costs.FORWARD_MAX_AGE_S` old and asks for it, as any page render does, until every
one was sampled with the neighbour running (what a server that has been busy for half a minute shows).
Each phase also prints the per-image figures the estimates multiply (after the busy phase's refresh,
and after each phase's work). The target is 0.67-1.5 for every ratio. FOLDER holds photos (for example ../shared/data/imagenet-samples);
the first ``--images`` are evaluated, the first 128 trained on, the first one explained.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tame_core.evaluation import EvaluationConfig  # noqa: E402
from tame_core.images import find_images, load_image  # noqa: E402
from tame_core.studio import costs  # noqa: E402
from tame_core.studio.evaluation import evaluation_cost, evaluation_work  # noqa: E402
from tame_core.studio.images import active_image  # noqa: E402
from tame_core.studio.jobs import Job, share_cpu_between_threads  # noqa: E402
from tame_core.studio import compare_estimate, compare_methods, curve_points, curves_estimate  # noqa: E402
from tame_core.studio.models import default_choice, load_model  # noqa: E402
from tame_core.studio.training import train_work, training_cost  # noqa: E402
from tame_core.studio.workspace import Workspace  # noqa: E402
from tame_core.training import TrainConfig  # noqa: E402

CURVE_METHODS = ("tame", "gradcam", "gradcam++")
COMPARE_METHODS = ("gradcam", "gradcam++", "scorecam")
TRAIN_IMAGES = 128  # 16 steps of 8: at a quarter, the rate of the later half is over two steps, not one


def _burn() -> None:  # pragma: no cover - a neighbour process
    while True:
        pass


def run_job(name: str, work) -> tuple[float, float | None, float | None]:
    """(seconds, remaining estimate at a quarter done, seconds actually left then)."""
    job = Job(name, work).start()
    start, read = time.monotonic(), None
    while not job.wait(0.05):
        if read is None and (job.progress or 0.0) >= 0.25 and job.remaining is not None:
            read = (time.monotonic(), job.remaining)
    if job.error is not None:
        raise RuntimeError(f"{name}: {job.error}")
    end = time.monotonic()
    return end - start, (read[1] if read else None), (end - read[0] if read else None)


def ratio(estimate: float | None, actual: float | None) -> str:
    return f"{estimate / actual:5.2f}" if estimate is not None and actual else "    –"


def settle_forward_time(since: float) -> None:
    """Have every figure the quiet phase measured measured again under the neighbour, as a server that has
    been busy for half a minute shows: each is asked for once it is stale (as any page render does), and
    the background refresh that starts is waited for. A refresh that began before the neighbour started
    does not count: its sample would mix quiet and busy batches."""
    model = load_model(default_choice())
    while True:
        old = [key for key, (_, when) in list(costs._MEASURED.items()) if key[1] == model.key and when < since + costs.REFRESH_SAMPLE_S + 1.0]
        if not old:
            return
        time.sleep(1.0)
        for what, _, size, *batch in old:
            costs.forward_seconds(model, size, *batch) if what == "forward" else costs.imputation_seconds(model)
        while costs._REFRESHING:
            time.sleep(0.1)


def figures() -> str:
    """The server's measured cost figures, per image: what every estimate multiplies."""
    return ", ".join(
        f"{what} {size[0]}x{size[1]}{f' batch {batch[0]}' if batch else ''} {seconds * 1000:.1f} ms"
        f" (least CPU {costs._LEAST_CPU.get(key, float('nan')) * 1000:.1f})"
        for key, (seconds, _) in sorted(costs._MEASURED.items()) for what, _, size, *batch in [key]
    )


def measure(folder: Path, images: int, scratch: Path) -> list[tuple[str, str, str, float]]:
    choice = default_choice()
    model = load_model(choice)
    files = find_images(folder)
    picture = active_image(load_image(files[0]), files[0].name, "sample")
    subject = Workspace().subject(model, picture)
    rows = []

    before = curves_estimate(subject, CURVE_METHODS, 50).seconds
    seconds, live, left = run_job("curves", lambda context: curve_points(subject, CURVE_METHODS, context, steps=50))
    rows.append(("curves (3 methods, 50 steps)", ratio(before, seconds), ratio(live, left), seconds))

    before = compare_estimate(subject, COMPARE_METHODS).seconds
    seconds, live, left = run_job("compare", lambda context: compare_methods(subject, COMPARE_METHODS, context))
    rows.append(("Compare (gradcam, gradcam++, scorecam)", ratio(before, seconds), ratio(live, left), seconds))

    config = EvaluationConfig(data=str(folder), methods=("tame", "gradcam"), limit=images, steps=10)
    before = evaluation_cost(model, config, images).seconds
    states = Path(tempfile.mkdtemp(dir=scratch))
    seconds, live, left = run_job("evaluate", lambda context: evaluation_work(choice, config, context, states))
    rows.append((f"evaluate ({images} images, tame + gradcam)", ratio(before, seconds), ratio(live, left), seconds))

    train = TrainConfig(data=[folder], out=Path(tempfile.mkdtemp(dir=scratch)) / "head", epochs=1,
                        batch_size=8, limit=TRAIN_IMAGES, progress=False)
    before = training_cost(model, train).seconds
    seconds, live, left = run_job("train", lambda context: train_work(train, context))
    rows.append((f"training ({TRAIN_IMAGES} images, 1 epoch)", ratio(before, seconds), ratio(live, left), seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--phases", default="quiet,busy")
    args = parser.parse_args()
    share_cpu_between_threads()  # as the app server does: its jobs run with half the cores each
    print("estimated ÷ actual (target 0.67-1.5); before = the button's estimate, live = time left at 25 %")
    print(f"{'phase':6} {'work':42} {'before':>6} {'live':>6} {'actual s':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        for phase in args.phases.split(","):
            burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(2 if phase == "busy" else 0)]
            for burner in burners:
                burner.start()
            started = time.monotonic()
            try:
                if burners:
                    settle_forward_time(started)
                    print(f"{phase:6} the figures the estimates use: {figures()}", flush=True)
                for work, before, live, seconds in measure(args.folder, args.images, Path(scratch)):
                    print(f"{phase:6} {work:42} {before:>6} {live:>6} {seconds:9.1f}", flush=True)
                print(f"{phase:6} the figures after its work: {figures()}", flush=True)
            finally:
                for burner in burners:
                    burner.kill()


if __name__ == "__main__":
    main()
