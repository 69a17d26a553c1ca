"""The job sequence Compare and the curves share: find the page's job, list the methods whose results are
missing, estimate them, and start the work at once when it is quick (else on the user's click).

A page asks :func:`compare_plan` or :func:`curves_plan` for a :class:`JobPlan` and lays it out; the
decision to start without asking is :attr:`JobPlan.starts_at_once`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from ..metrics.curves import Baseline
from .compare import compare_estimate, compare_methods
from .costs import Estimate
from .curves import curve_points, curves_estimate
from .jobs import Job, JobContext, JobState
from .result_cache import Subject, missing
from .workspace import Workspace

#: Work estimated to take longer than this waits for the user's click (with the estimate on the button);
#: shorter work starts at once, its estimate in the job's name.
AUTO_START_SECONDS = 30.0


@dataclass
class JobPlan:
    """A page's job (None before its first run), the methods still missing, and what computing them costs
    (None when nothing is missing or the job already runs)."""

    workspace: Workspace
    kind: str  # the workspace's job key: "compare" or "curves"
    tag: Hashable  # what the job is about: subject and settings
    title: str  # the job's name, before "(estimated ...)"
    job: Job | None
    todo: list[str]
    estimate: Estimate | None
    work: Callable[[JobContext], Any]

    @property
    def starts_at_once(self) -> bool:
        """Quick work starts without a click, unless the last run was stopped or failed (then the user asks)."""
        quick = self.estimate is not None and self.estimate.seconds <= AUTO_START_SECONDS
        return quick and (self.job is None or self.job.state is JobState.DONE)

    @property
    def records(self) -> Sequence[Any]:
        """What the job has recorded so far (maps, curve points), to draw while it runs."""
        return self.job.records if self.job is not None else ()

    def start(self) -> Job:
        """Start the work in the background; the plan's job is then the new one."""
        if self.estimate is None:
            raise ValueError("nothing to start: every result is there or the job runs")
        name = f"{self.title} (estimated {self.estimate.duration})"
        self.job = self.workspace.start_job(self.kind, name, self.work, self.tag)
        return self.job


def _plan(
    ws: Workspace,
    kind: str,
    tag: Hashable,
    title: str,
    todo: list[str],
    estimate: Callable[[], Estimate],
    work: Callable[[JobContext], Any],
) -> JobPlan:
    """The plan for ``todo``: estimated only when something is missing and the job is not running already."""
    job = ws.job_for(kind, tag)
    needed = bool(todo) and not (job is not None and job.running)
    return JobPlan(ws, kind, tag, title, job, todo, estimate() if needed else None, work)


def compare_plan(ws: Workspace, subject: Subject, methods: Sequence[str]) -> JobPlan:
    """Compare's job for the subject: the maps of ``methods`` not yet in the session's cache."""
    todo = missing(subject, methods, ws.results)
    return _plan(
        ws,
        "compare",
        subject.key(),
        "Comparing methods",
        todo,
        lambda: compare_estimate(subject, todo, ws.results),
        lambda context: compare_methods(subject, todo, context, ws.results),
    )


def curves_plan(ws: Workspace, subject: Subject, methods: Sequence[str], steps: int, baseline: Baseline) -> JobPlan:
    """The curves' job for the subject at ``steps`` onto ``baseline``: the curves not yet in the cache."""
    todo = missing(subject, methods, ws.results, steps, baseline)
    return _plan(
        ws,
        "curves",
        (subject.key(), steps, baseline),
        "Deletion and insertion curves",
        todo,
        lambda: curves_estimate(subject, todo, steps, ws.results, baseline),
        lambda context: curve_points(subject, todo, context, steps, baseline, ws.results),
    )
