"""The explorer app's logic, without the UI: what ``app.py`` and ``pages/`` call.

Pure Python over :mod:`tame_core` (nothing here imports Streamlit), so all of it is tested directly:

* :mod:`.models`: which head and backbone (``ModelChoice``), loaded once and shared with a lock;
* :mod:`.images`: uploads checked into ``ActiveImage`` objects keyed by content hash;
* :mod:`.samples`: the public-domain / CC0 gallery and Demo mode's curated set;
* :mod:`.workspace`: one session's pictures, cached explanations and jobs;
* :mod:`.jobs`: background work with progress, records, stop and result;
* :mod:`.render`: overlays, heatmaps, colour scales and download files; :mod:`.plots`: plotly figures;
* :mod:`.costs`: estimates before work starts, honest timings after;
* the work behind the pages: :mod:`.ablation` (Branches), :mod:`.methods` (Deletion curves, Compare),
  :mod:`.training` (Train), :mod:`.evaluation` and :mod:`.per_image` (Evaluate); Demo mode uses
  ``Workspace.precompute``.
"""

from .images import MAX_UPLOAD_MB, UPLOAD_TYPES, ActiveImage, read_upload
from .jobs import Job, JobContext, JobState, JobStopped
from .models import HEAD_ENV, WEIGHTS_ENV, LoadedModel, ModelChoice, default_choice, load_model, store_uploaded_head, store_uploaded_weights
from .samples import DEMO, GALLERY, load_sample
from .workspace import Workspace

__all__ = [
    "DEMO",
    "GALLERY",
    "HEAD_ENV",
    "MAX_UPLOAD_MB",
    "UPLOAD_TYPES",
    "ActiveImage",
    "Job",
    "JobContext",
    "JobState",
    "JobStopped",
    "LoadedModel",
    "ModelChoice",
    "Workspace",
    "default_choice",
    "load_model",
    "load_sample",
    "read_upload",
    "store_uploaded_head",
    "store_uploaded_weights",
    "WEIGHTS_ENV",
]
