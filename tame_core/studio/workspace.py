"""One browser session's state: its pictures, its explanations and its background jobs.

The app keeps one :class:`Workspace` in ``st.session_state``, so two sessions never see each other's
images or results. Explanations are cached by (model, image hash): the first view of a picture runs
the backbone once, and every class switch or branch toggle after that re-runs only the head's fuser
on the cached features.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Sequence

from ..explainer import KEEP, Explanation
from ..head import BranchMask
from .ablation import BranchTerms, branch_terms
from .images import ActiveImage
from .jobs import Job, JobContext, Work
from .result_cache import ResultCache, Subject
from .models import LoadedModel

#: Explanations kept per session (one is a few MB of cached features).
MAX_EXPLANATIONS = 48


class Workspace:
    """Pictures in upload order, the current one, cached explanations and per-image choices.

    ``alive`` (is the browser session still connected?) and ``orphan_after`` (seconds without a
    :meth:`heartbeat`) are given to every job, so that jobs stop once the session is gone.
    """

    def __init__(
        self,
        max_explanations: int = MAX_EXPLANATIONS,
        alive: Callable[[], bool] | None = None,
        orphan_after: float | None = None,
    ) -> None:
        self.images: OrderedDict[str, ActiveImage] = OrderedDict()
        self.current: str | None = None
        self.upload_errors: dict[str, str] = {}  # uploader file id -> one-line error
        self.seen_uploads: dict[str, str] = {}  # uploader file id -> image digest
        self.jobs: dict[str, Job] = {}
        self._classes: dict[tuple[Hashable, str], int] = {}
        self._masks: dict[Hashable, tuple[bool, ...]] = {}
        self._explanations: OrderedDict[tuple[Hashable, str], Explanation] = OrderedDict()
        self._max = max_explanations
        self._lock = threading.Lock()  # background precomputation writes the cache too
        #: Finished maps and curves of Compare and Deletion curves (see :mod:`.result_cache`).
        self.results = ResultCache()
        self.alive = alive
        self.orphan_after = orphan_after

    # --- pictures --------------------------------------------------------------------------------
    def add(self, image: ActiveImage, select: bool = True) -> ActiveImage:
        """Add a picture (once per content hash) and, by default, make it the current one."""
        kept = self.images.setdefault(image.digest, image)
        if select or self.current is None:
            self.current = kept.digest
        return kept

    def select(self, digest: str) -> None:
        if digest not in self.images:
            raise KeyError(digest)
        self.current = digest

    @property
    def current_image(self) -> ActiveImage | None:
        return self.images.get(self.current) if self.current else None

    def clear(self) -> None:
        """Forget every picture and result of this session (running jobs are asked to stop)."""
        for job in self.jobs.values():
            job.stop()
        self.images.clear()
        self.current = None
        self.upload_errors.clear()
        self.seen_uploads.clear()
        self.jobs.clear()
        self._classes.clear()
        self.results.clear()
        with self._lock:
            self._explanations.clear()

    # --- explanations ----------------------------------------------------------------------------
    def cached(self, model: LoadedModel, digest: str) -> Explanation | None:
        with self._lock:
            found = self._explanations.get((model.key, digest))
            if found is not None:
                self._explanations.move_to_end((model.key, digest))
            return found

    def store(self, model: LoadedModel, digest: str, explanation: Explanation) -> None:
        with self._lock:
            self._explanations[(model.key, digest)] = explanation
            self._explanations.move_to_end((model.key, digest))
            while len(self._explanations) > self._max:
                self._explanations.popitem(last=False)

    def explanation(self, model: LoadedModel, image: ActiveImage) -> Explanation:
        """The picture's top-1 explanation with its cached features (one backbone run per model and picture)."""
        found = self.cached(model, image.digest)
        if found is None:
            found = model.explain(image.pixels)
            self.store(model, image.digest, found)
        return found

    def subject(self, model: LoadedModel, image: ActiveImage, class_index: int | None = None) -> Subject:
        """The picture explained for ``class_index`` (default: the user's choice), as Compare and the curves use it."""
        chosen = self.chosen_class(model, image) if class_index is None else int(class_index)
        return Subject(model, image.digest, self.view(model, image, chosen))

    def branch_terms(self, model: LoadedModel, image: ActiveImage, class_index: int) -> BranchTerms:
        """Each branch's signed term of the class's map (head only, kept: branch toggles do not change it)."""
        key = (model.key, image.digest, int(class_index), "branch terms")
        found = self.results.get(key)
        if found is None:
            found = branch_terms(self.view(model, image, class_index))
            self.results.put(key, found)
        return found

    def precompute(self, model: LoadedModel, images: Sequence[ActiveImage], context: JobContext) -> int:
        """Explain ``images`` ahead of time (a background job's work, e.g. for Demo mode); returns how many."""
        for done, image in enumerate(images):
            context.check_stop()
            context.progress(done / len(images), f"Explaining {image.name} ({done + 1}/{len(images)})")
            self.explanation(model, image)
        return len(images)

    def view(
        self, model: LoadedModel, image: ActiveImage, class_index: int | None = None, mask: Sequence[bool] | None = None
    ) -> Explanation:
        """The picture explained for ``class_index`` with ``mask``'s branches on: the head's fuser alone
        (once, for both choices) when cached; the cached explanation itself for its own class and every branch."""
        result = self.explanation(model, image)
        same_class = class_index is None or class_index == int(result.classes[0, 0])
        every_branch = mask is None or all(mask)
        return result.with_choices(KEEP if same_class else class_index, KEEP if every_branch else mask)

    # --- the user's choices, per model -----------------------------------------------------------
    def chosen_class(self, model: LoadedModel, image: ActiveImage) -> int:
        """The class the user picked for this picture, or the model's top-1."""
        key = (model.key, image.digest)
        if key not in self._classes:
            self._classes[key] = int(self.explanation(model, image).classes[0, 0])
        return self._classes[key]

    def choose_class(self, model: LoadedModel, image: ActiveImage, class_index: int) -> None:
        self._classes[(model.key, image.digest)] = int(class_index)

    def branch_mask(self, model: LoadedModel) -> tuple[bool, ...]:
        return self._masks.get(model.key, (True,) * len(model.layers))

    def set_branch_mask(self, model: LoadedModel, mask: BranchMask | None) -> None:
        """Keep the user's branch mask for ``model`` (``None``: every branch on), checked by the head's parser."""
        flags = model.explainer.parse_branch_mask(mask)
        self._masks[model.key] = (True,) * len(model.layers) if flags is None else flags

    # --- background jobs -------------------------------------------------------------------------
    def job(self, key: str) -> Job | None:
        return self.jobs.get(key)

    def job_for(self, key: str, tag: Hashable) -> Job | None:
        """Job ``key`` if it was started for ``tag`` (the current selection), else None."""
        job = self.jobs.get(key)
        return job if job is not None and job.tag == tag else None

    def start_job(self, key: str, name: str, work: Work, tag: Hashable = None) -> Job:
        """Start ``work`` as this session's job ``key``; a job still running under that key is stopped first."""
        previous = self.jobs.get(key)
        if previous is not None and previous.running:
            previous.stop()
        job = Job(name, work, tag, alive=self.alive, orphan_after=self.orphan_after)
        self.jobs[key] = job
        return job.start()

    def heartbeat(self) -> None:
        """The session is still here: every job it started keeps running."""
        for job in list(self.jobs.values()):
            job.touch()

    @property
    def running_jobs(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.running]
