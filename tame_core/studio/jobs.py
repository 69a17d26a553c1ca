"""Long work off the page: a background thread with progress, records, a stop button and a result.

A Streamlit script must finish quickly to keep the page responsive, so training, evaluation, curves,
comparisons and demo precomputation run as a :class:`Job`. The page polls the job (a fragment that
reruns every second) and draws its progress and the records it has produced so far. The work function
receives a :class:`JobContext`; it reports progress, appends records and checks for a stop request.
Jobs never touch Streamlit, so they run the same in tests, scripts and the app.

Stopping is prompt: :meth:`JobContext.watching` makes every forward pass of a model check the stop flag
(:mod:`tame_core.stopping`), so a stop takes effect within one network block, not one method. A job
also stops itself once nobody is watching it: when ``alive()`` (is the browser session still
connected?) says no for :data:`ALIVE_GRACE_S` seconds, or when nothing :meth:`Job.touch` es it for
``orphan_after`` seconds (the page's heartbeat).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Hashable, Iterator, Sequence

import torch
from torch import nn

from ..errors import TameError
from ..stopping import Stopped, stop_on

log = logging.getLogger(__name__)

#: How long a job's session may look disconnected before the job stops (a reconnect takes a moment).
ALIVE_GRACE_S = 5.0
#: How often the watchdog looks at a job's session and heartbeat.
WATCH_INTERVAL_S = 0.5

STOPPED_BY_USER = "stopped on request"
SESSION_ENDED = "its browser session ended"
NO_HEARTBEAT = "nobody watched it for {seconds:.0f} s"


def share_cpu_between_threads(cores: int | None = None) -> int:
    """Give each thread that runs torch on the CPU at most half the cores (one on a 2-core machine).

    A server runs page scripts and background jobs in many threads, each of which gets its own
    OpenMP team. With more team threads than cores, OpenMP stops spinning and every parallel region
    waits for a sleeping worker to be scheduled again: on a busy 2-core machine a forward pass that
    takes 80 ms in a script took 700-6,700 ms in the app's job thread (1 thread: 50-170 ms). Call it
    once when the app server starts; returns the thread count set.
    """
    threads = max(1, (cores if cores is not None else os.cpu_count() or 1) // 2)
    torch.set_num_threads(threads)
    return threads


def freeze_imported_objects() -> int:
    """Move every object alive now (the imported libraries: torch, timm, Streamlit...) out of the
    garbage collector's sight; returns how many there are.

    Why: a full collection walks every tracked object, and with the app's libraries loaded there are
    about 580,000 of them: about 300 ms on this 2-core machine, holding the GIL, so the server can neither
    send a new picture nor serve it meanwhile (a class switch that met its 300 ms took 400 ms whenever one
    landed). Module-level objects live as long as the process, so the collector has nothing to find
    among them; after the freeze a full collection takes under a millisecond (benchmarks/bench_app.py).
    Call it once when the app server starts, after the imports.
    """
    gc.freeze()
    return gc.get_freeze_count()


def time_left(marks: Sequence[tuple[float, float]], now: float) -> float | None:
    """Seconds left after the progress ``marks`` ((when, fraction done), in order) at time ``now``.

    The rate is taken over the later half of the progress made so far, not since the start: the first
    part of a run carries warm-ups and first calls (a forward that builds its kernels, a dataset's
    first reads), which would make the estimate of the rest about twice too long on short runs. Setup
    before the first progress never counts. None until a twentieth of the work and a second have passed.
    """
    if not marks:
        return None
    (first_at, first), (_, done) = marks[0], marks[-1]
    if now - first_at < 1.0 or done - first < 0.05:
        return None
    middle = (first + done) / 2
    since_at, since = next((t, p) for t, p in marks if p >= middle)
    if now - since_at < 0.5 or done - since < 0.025:  # the later half is too short to time: use it all
        since_at, since = first_at, first
    return (now - since_at) / (done - since) * (1.0 - done)


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


class JobStopped(Stopped):
    """Raised inside work by :meth:`JobContext.check_stop` to end it early but cleanly."""


class JobContext:
    """What a job's work function sees: progress, records, the stop flag and a forward counter."""

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

    @contextlib.contextmanager
    def watching(self, model: nn.Module, on_forward: Callable[[int], None] | None = None) -> Iterator[None]:
        """Make ``model``'s forwards on this thread check the stop flag, and count them for the page."""

        def counted(images: int) -> None:
            with self._job._lock:
                self._job._forwards += images
                self._job._forward_calls += 1
            if on_forward is not None:
                on_forward(images)

        with stop_on(model, self._job._stop, counted):
            yield

    @property
    def forwards(self) -> int:
        """Images sent forward through watched models so far."""
        return self._job._forwards

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        with self._job._lock:
            if fraction is not None:
                self._job._progress = min(1.0, max(0.0, float(fraction)))
                if self._job._progress > 0:
                    self._job._marks.append((time.monotonic(), self._job._progress))
            if message is not None:
                self._job._message = message

    def record(self, item: Any) -> None:
        """Append one result as it is computed (a curve point, a loss record, a method's map...)."""
        with self._job._lock:
            self._job._records.append(item)


Work = Callable[[JobContext], Any]


class Job:
    """One unit of background work: ``Job(name, work).start()``, then poll its properties.

    ``alive`` (is the owner still there?) and ``orphan_after`` (seconds without :meth:`touch`) let the
    job stop itself when the page that started it is gone.
    """

    def __init__(
        self,
        name: str,
        work: Work,
        tag: Hashable = None,
        *,
        alive: Callable[[], bool] | None = None,
        orphan_after: float | None = None,
    ) -> None:
        self.name = name
        #: What the job was started for (e.g. model, image, class and settings): a page shows a job's
        #: results only while its tag matches what the user has selected now.
        self.tag = tag
        self._work = work
        self._alive = alive
        self._orphan_after = orphan_after
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = JobState.PENDING
        self._progress = 0.0
        self._marks: list[tuple[float, float]] = []  # (when, fraction) at each progress made: the live rate
        self._message = ""
        self._records: list[Any] = []
        self._result: Any = None
        self._error: str | None = None
        self._started: float | None = None
        self._finished: float | None = None
        self._stop_asked: float | None = None
        self._stop_reason: str | None = None
        self._seen = time.monotonic()
        self._forwards = 0
        self._forward_calls = 0
        self._calls_at_stop: int | None = None

    def start(self) -> "Job":
        if self._thread is not None:
            raise RuntimeError(f"job {self.name!r} was already started")
        self._state = JobState.RUNNING
        self._started = self._seen = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"tame-job-{self.name}", daemon=True)
        self._thread.start()
        if self._alive is not None or self._orphan_after is not None:
            threading.Thread(target=self._watch, name=f"tame-watch-{self.name}", daemon=True).start()
        return self

    def stop(self, reason: str = STOPPED_BY_USER) -> None:
        """Ask the work to stop at its next check; it keeps what it has (and may save a resumable state)."""
        with self._lock:
            if self._stop_asked is None:
                self._stop_asked, self._stop_reason = time.monotonic(), reason
                self._calls_at_stop = self._forward_calls
        self._stop.set()

    def touch(self) -> None:
        """Someone is still looking at this job (the page's heartbeat)."""
        self._seen = time.monotonic()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (tests and scripts); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _watch(self) -> None:
        """Stop the job once its session is gone (``alive`` false for a while) or its heartbeat lapses."""
        gone_since: float | None = None
        while not self._ended.wait(WATCH_INTERVAL_S):
            now = time.monotonic()
            try:
                alive = self._alive() if self._alive is not None else True
            except Exception:  # noqa: BLE001 - a broken probe must not keep an orphan running
                alive = False
            gone_since = None if alive else (gone_since or now)
            if gone_since is not None and now - gone_since >= ALIVE_GRACE_S:
                self.stop(SESSION_ENDED)
                return
            if self._orphan_after is not None and now - self._seen > self._orphan_after:
                self.stop(NO_HEARTBEAT.format(seconds=self._orphan_after))
                return

    def _run(self) -> None:
        context = JobContext(self)
        try:
            result = self._work(context)
            state, error = (JobState.STOPPED if self._stop.is_set() else JobState.DONE), None
        except Stopped:
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
        self._ended.set()
        if state is JobState.STOPPED:
            log.warning(
                "job %s: %s; ended %.2f s after the request", self.name, self._stop_reason, self.stop_latency or 0.0
            )

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

    @property
    def remaining(self) -> float | None:
        """Seconds left at the rate this run keeps now (see :func:`time_left`); None until a twentieth of the
        work and a second have passed since the first progress, and once the job has ended."""
        if not self.running:
            return None
        with self._lock:
            marks = list(self._marks)
        return time_left(marks, time.monotonic())

    @property
    def forwards(self) -> int:
        """Images sent forward through the models the work watches (see :meth:`JobContext.watching`)."""
        return self._forwards

    @property
    def forward_calls(self) -> int:
        """Forwards (calls, any batch size) started through the models the work watches: a stop is honoured
        when at most one more starts after it is asked (the one that finds the flag set)."""
        return self._forward_calls

    @property
    def forwards_after_stop(self) -> int | None:
        """Forwards started after Stop was asked (None if it never was): 0 or 1 when the work honours it at
        its next forward, however busy the machine (what the tests check instead of a time)."""
        return None if self._calls_at_stop is None else self._forward_calls - self._calls_at_stop

    @property
    def stop_reason(self) -> str | None:
        """Why a stop was asked for (by the user, or the session ended), None if it never was."""
        return self._stop_reason

    @property
    def stop_latency(self) -> float | None:
        """Seconds from the (first) stop request until the work ended; None while it runs or if never asked."""
        if self._stop_asked is None or self._finished is None:
            return None
        return max(0.0, self._finished - self._stop_asked)
