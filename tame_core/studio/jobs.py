"""Long work off the page: a background thread with progress, records, a stop button and a result.

A Streamlit script must finish quickly to keep the page responsive, so training, evaluation, curves,
comparisons and demo precomputation run as a :class:`Job`. The page polls the job (a fragment that
reruns every second) and draws its progress and the records it has produced so far. The work function
receives a :class:`JobContext`; it reports progress, appends records and checks for a stop request.
Jobs never touch Streamlit, so they run the same in tests, scripts and the app.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any, Callable, Hashable

from ..errors import TameError

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


class JobStopped(Exception):
    """Raised inside work by :meth:`JobContext.check_stop` to end it early but cleanly."""


class JobContext:
    """What a job's work function sees: progress, records and the stop flag."""

    def __init__(self, job: "Job") -> None:
        self._job = job

    @property
    def stop_event(self) -> threading.Event:
        """Set when the user asks to stop; hand it to APIs that take one (e.g. ``train_head(stop=)``)."""
        return self._job._stop

    @property
    def stopping(self) -> bool:
        return self._job._stop.is_set()

    def check_stop(self) -> None:
        if self._job._stop.is_set():
            raise JobStopped()

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        with self._job._lock:
            if fraction is not None:
                self._job._progress = min(1.0, max(0.0, float(fraction)))
            if message is not None:
                self._job._message = message

    def record(self, item: Any) -> None:
        """Append one result as it is computed (a curve point, a loss record, a method's map...)."""
        with self._job._lock:
            self._job._records.append(item)


Work = Callable[[JobContext], Any]


class Job:
    """One unit of background work: ``Job(name, work).start()``, then poll its properties."""

    def __init__(self, name: str, work: Work, tag: Hashable = None) -> None:
        self.name = name
        #: What the job was started for (e.g. model, image, class and settings): a page shows a job's
        #: results only while its tag matches what the user has selected now.
        self.tag = tag
        self._work = work
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = JobState.PENDING
        self._progress = 0.0
        self._message = ""
        self._records: list[Any] = []
        self._result: Any = None
        self._error: str | None = None
        self._started: float | None = None
        self._finished: float | None = None

    def start(self) -> "Job":
        if self._thread is not None:
            raise RuntimeError(f"job {self.name!r} was already started")
        self._state = JobState.RUNNING
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"tame-job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the work to stop at its next check; it keeps what it has (and may save a resumable state)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (tests and scripts); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        context = JobContext(self)
        try:
            result = self._work(context)
            state, error = (JobState.STOPPED if self._stop.is_set() else JobState.DONE), None
        except JobStopped:
            result, state, error = None, JobState.STOPPED, None
        except TameError as exc:
            result, state, error = None, JobState.FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: one line for the page, the traceback for the log
            log.exception("job %s failed", self.name)
            reason = " ".join(str(exc).split())[:300]
            result, state, error = None, JobState.FAILED, f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        with self._lock:
            self._result, self._state, self._error = result, state, error
            if state is JobState.DONE:
                self._progress = 1.0
            self._finished = time.monotonic()

    # --- reading a job from the page -------------------------------------------------------------
    @property
    def state(self) -> JobState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is JobState.RUNNING

    @property
    def finished(self) -> bool:
        return self._state in (JobState.DONE, JobState.STOPPED, JobState.FAILED)

    @property
    def progress(self) -> float:
        return self._progress

    @property
    def message(self) -> str:
        return self._message

    @property
    def result(self) -> Any:
        return self._result

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def records(self) -> list[Any]:
        """A copy of the records so far (safe to iterate while the job appends)."""
        with self._lock:
            return list(self._records)

    @property
    def elapsed(self) -> float:
        if self._started is None:
            return 0.0
        return (self._finished or time.monotonic()) - self._started
