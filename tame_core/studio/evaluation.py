"""Evaluating a head from the app: :func:`tame_core.evaluation.evaluate` as a stoppable, resumable job.

An evaluation runs for minutes, so it gets its own copy of the model instead of holding the shared one
(which would stall every other session's explanations). Its per-image results are saved after every
batch to a state file named by the settings, in a folder of the session's own
(:class:`~tame_core.studio.storage.SessionFolder`), so a stopped run resumes where it stopped and no
session starts over, or resumes, another's run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ..atomic import OutputLock
from ..errors import EvaluationError, TameError
from ..evaluation import EvaluationConfig, EvaluationReport, evaluate
from ..evaluation.state import MAX_STATE_BYTES, checked_tally
from ..reading import read_json
from ..metrics import spec_for
from .jobs import JobContext
from .models import ModelChoice, load_model


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


def evaluation_work(
    choice: ModelChoice, config: EvaluationConfig, context: JobContext, state_folder: str | Path
) -> EvaluationReport:
    """Run the evaluation (resuming its saved state, if any) with progress and stop wired to the job."""
    context.progress(0.0, "Loading a copy of the model")
    explainer = load_model(choice).explainer

    def progress(done: int, total: int, message: str) -> None:
        context.progress(done / total if total else 0.0, message)

    state = state_path(config, choice, state_folder)
    with OutputLock(state, "this evaluation"), context.watching(explainer.backbone):  # one job per state; evaluate checks Stop itself
        return evaluate(explainer, config, progress, state_path=state, stop=context.stop_event)


def column_title(name: str) -> str:
    """A table heading that says which way is better: ``AD100 ↓``, ``IC100 ↑``."""
    if name in ("method", "images"):
        return name
    return f"{name} {spec_for(name).arrow}"
