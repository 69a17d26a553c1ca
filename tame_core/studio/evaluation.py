"""Evaluating a head from the app: :func:`tame_core.evaluation.evaluate` as a stoppable, resumable job.

An evaluation runs for minutes, so it gets its own copy of the model instead of holding the shared one
(which would stall every other session's explanations). Its per-image results are saved after every
batch to a state file named by the settings (and small thumbnails of the first images and their maps to
a folder beside it, :mod:`.per_image`), in a folder of the session's own
(:class:`~tame_core.studio.storage.SessionFolder`), so a stopped run resumes where it stopped and no
session starts over, or resumes, another's run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from ..atomic import OutputLock
from ..errors import EvaluationError, TameError
from ..evaluation import EvaluationConfig, EvaluationReport, evaluate, select_files
from ..evaluation.state import MAX_STATE_BYTES, checked_tally
from ..reading import read_json
from .costs import Estimate, evaluation_estimate
from .jobs import Job, JobContext
from .models import LoadedModel, ModelChoice, load_model
from .per_image import ThumbnailKeeper, column_title, thumbnail_folder
from .workspace import Workspace

__all__ = [
    "can_resume",
    "column_title",
    "evaluation_cost",
    "evaluation_thumbnails",
    "evaluation_work",
    "forget_run",
    "image_total",
    "start_evaluation",
    "state_path",
]


def state_path(config: EvaluationConfig, choice: ModelChoice, folder: str | Path) -> Path:
    """Where this evaluation's partial results live in ``folder`` (one file per model and settings)."""
    key = json.dumps({"model": repr(choice), **asdict(config)}, sort_keys=True, default=str)
    return Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def can_resume(config: EvaluationConfig, choice: ModelChoice, state_folder: str | Path) -> bool:
    """Whether a stopped run of this evaluation left images still to do."""
    try:
        saved = read_json(state_path(config, choice, state_folder), EvaluationError, MAX_STATE_BYTES)
        tally = checked_tally(saved["tally"], saved["settings"], "")
        return tally.get("images_done", 0) < saved["settings"]["images"]
    except (TameError, KeyError, TypeError, AttributeError):
        return False


def forget_run(config: EvaluationConfig, choice: ModelChoice, state_folder: str | Path) -> None:
    """Drop a stopped run's state and thumbnails, so a fresh run starts over."""
    state = state_path(config, choice, state_folder)
    state.unlink(missing_ok=True)
    shutil.rmtree(thumbnail_folder(state), ignore_errors=True)


def evaluation_work(
    choice: ModelChoice, config: EvaluationConfig, context: JobContext, state_folder: str | Path
) -> EvaluationReport:
    """Run the evaluation (resuming its saved state, if any) with progress and stop wired to the job; the
    first images' thumbnails and maps go to :func:`~.per_image.thumbnail_folder` of its state."""
    context.progress(0.0, "Loading a copy of the model")
    explainer = load_model(choice).explainer

    def progress(done: int, total: int, message: str) -> None:
        context.progress(done / total if total else 0.0, message)

    state = state_path(config, choice, state_folder)
    with OutputLock(state, "this evaluation"), context.watching(explainer.backbone):  # one job per state; evaluate checks Stop itself
        keeper = ThumbnailKeeper(thumbnail_folder(state))  # thumbnails of a stopped run's images are kept
        return evaluate(explainer, config, progress, state_path=state, stop=context.stop_event, on_maps=keeper)


def image_total(config: EvaluationConfig) -> int:
    """How many images the evaluation will read (its folder, split and limit), before it starts."""
    return len(select_files(config.data, config.split, limit=config.limit))


def evaluation_cost(model: LoadedModel, config: EvaluationConfig, images: int) -> Estimate:
    """What evaluating ``images`` images with ``config`` will cost on this machine."""
    return evaluation_estimate(model, config.methods, images, config.steps, dict(config.method_limits), config.metrics)


def start_evaluation(
    ws: Workspace, model: LoadedModel, config: EvaluationConfig, state_folder: str | Path, estimate: Estimate, fresh: bool
) -> Job:
    """Run the evaluation in the background. ``fresh`` starts over: a stopped run's state and thumbnails
    in ``state_folder`` (the session's own) are deleted first; else it resumes from the images done.
    The job's tag is its state file, beside which its thumbnails are kept."""
    if fresh:
        forget_run(config, model.choice, state_folder)
    return ws.start_job(
        "evaluate",
        f"Evaluating (estimated {estimate.duration})",
        lambda context: evaluation_work(model.choice, config, context, state_folder),
        state_path(config, model.choice, state_folder),
    )


def evaluation_thumbnails(job: Job) -> Path | None:
    """Where an evaluation job's thumbnails are: beside its state, the job's tag (None for another job)."""
    return thumbnail_folder(job.tag) if isinstance(job.tag, Path) else None
