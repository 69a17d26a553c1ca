"""The explorer app's logic, without the UI: what ``app.py`` and ``pages/`` call.

Pure Python over :mod:`tame_core` (nothing here imports Streamlit), so all of it is tested directly:

* :mod:`.models`: which head and backbone (``ModelChoice``), loaded once and shared with a lock;
* :mod:`.images`: uploads checked into ``ActiveImage`` objects keyed by content hash, the CC0 gallery;
* :mod:`.workspace`: one session's pictures, cached explanations and jobs;
* :mod:`.jobs`: background work with progress, records, stop and result;
* :mod:`.render`: overlays, heatmaps and download files; :mod:`.plots`: plotly figures;
* the work behind the pages: :mod:`.ablation` (Branches), :mod:`.methods` (Deletion curves, Compare),
  :mod:`.training` (Train), :mod:`.evaluation` (Evaluate); Demo mode uses ``Workspace.precompute``.
"""

from .images import GALLERY, MAX_UPLOAD_MB, UPLOAD_TYPES, ActiveImage, load_sample, read_upload
from .jobs import Job, JobContext, JobState, JobStopped
from .models import HEAD_ENV, LoadedModel, ModelChoice, default_choice, load_model, store_uploaded_head
from .workspace import Workspace

__all__ = [
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
]
