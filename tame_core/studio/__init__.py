"""The explorer app's logic, without the UI: what ``app.py`` and ``pages/`` call.

Pure Python over :mod:`tame_core` (nothing here imports Streamlit), so all of it is tested directly.
The pages import only from this package (``tests/test_pages_layout.py`` checks it): every name they
use, the constants of the lower layers (fills, splits, recipes...) included, is re-exported below.

* :mod:`.models`: which head and backbone (``ModelChoice``), loaded once and shared with a lock;
* :mod:`.images`: uploads checked into ``ActiveImage`` objects keyed by content hash;
* :mod:`.samples`: the public-domain / CC0 gallery and Demo mode's curated set;
* :mod:`.workspace`: one session's pictures, cached explanations and jobs;
* :mod:`.jobs`: background work with progress, records, stop and result;
* :mod:`.render`: overlays, heatmaps, colour scales and download files; :mod:`.plots`: plotly figures;
* :mod:`.costs`: estimates before work starts, honest timings after;
* :mod:`.catalogue`: the backbones, methods and metrics on offer (the one place pages ask);
* the work behind the pages: :mod:`.ablation` (Branches), :mod:`.result_cache`, :mod:`.compare`,
  :mod:`.curves` and :mod:`.method_jobs` (Compare, Deletion curves), :mod:`.training` (Train),
  :mod:`.evaluation` and :mod:`.per_image` (Evaluate); Demo mode uses ``Workspace.precompute``.
"""

from ..backbones import DEFAULT_BACKBONE
from ..heads import CHECKPOINT_DIR, bundled_head_path
from ..errors import AccessError, ImageLoadError, TameError
from ..evaluation import TABLE_COLUMNS, EvaluationConfig
from ..explainer import Explanation
from ..head import VARIANTS
from ..hub import push_head
from ..maps import COLORMAPS
from ..metrics.curves import DEFAULT_FILLS, DEFAULT_STEPS, FILLS, MODES, fills_text
from ..training import RECIPES, SPLITS, TrainConfig
from . import costs, plots, render
from .ablation import (
    NEARLY_FLAT,
    AblationRow,
    BranchTerms,
    ablation_rows,
    branch_names,
    combinations,
    feature_sizes,
    flat_map_warning,
    masks_to_measure,
    plain_reading,
)
from .catalogue import backbone_names, method_names, method_summary, metric_spec
from .compare import (
    REFERENCE,
    ForwardProgress,
    MethodMap,
    coinciding,
    coinciding_text,
    compare_estimate,
    compare_methods,
    cost_rows,
    maps_so_far,
    method_map,
    timed_in_turns,
)
from .costs import Estimate, duration_text, with_relative_times
from .curves import (
    CurvePoint,
    auc_direction,
    auc_rows,
    auc_table,
    auc_title,
    curve_points,
    curve_results,
    curves_estimate,
    curves_so_far,
    perturbed_image,
)
from .evaluation import can_resume as can_resume_evaluation
from .evaluation import (
    column_title,
    evaluation_cost,
    evaluation_thumbnails,
    evaluation_work,
    forget_run,
    image_total,
    start_evaluation,
    state_path,
)
from .images import MAX_UPLOAD_MB, UPLOAD_TYPES, ActiveImage, read_upload
from .jobs import STOPPED_BY_USER, Job, JobContext, JobState, JobStopped, freeze_imported_objects, share_cpu_between_threads
from .method_jobs import AUTO_START_SECONDS, JobPlan, compare_plan, curves_plan
from .models import (
    HEAD_ENV,
    MAX_HEAD_UPLOAD_MB,
    WEIGHTS_ENV,
    LoadedModel,
    ModelChoice,
    available_devices,
    default_choice,
    load_model,
    store_uploaded_head,
    store_uploaded_weights,
)
from .per_image import (
    MAX_THUMBNAIL_IMAGES,
    WITHIN_NOISE,
    comparison_rows,
    default_pair,
    image_count,
    per_image_rows,
    thumbnail_folder,
)
from .result_cache import ResultCache, Subject, curve_key, map_key, missing
from .samples import DEMO, GALLERY, GETS_IT_WRONG, load_sample, mispredicted
from .storage import DISCONNECTED_TTL_S, SessionFolder, hub_repo_id, public_message, server_folder, server_head, server_path
from .training import CHECKPOINT_EVERY
from .training import can_resume as can_resume_training
from .training import (
    latest_preview,
    layer_choices,
    loss_history,
    resumed_steps,
    run_config,
    run_outcome,
    start_training,
    total_steps,
    training_config,
    training_cost,
    unpack_upload,
)
from .workspace import Workspace

__all__ = [
    "ablation_rows",
    "AblationRow",
    "AccessError",
    "ActiveImage",
    "auc_direction",
    "auc_rows",
    "auc_table",
    "auc_title",
    "AUTO_START_SECONDS",
    "available_devices",
    "backbone_names",
    "branch_names",
    "BranchTerms",
    "bundled_head_path",
    "can_resume_evaluation",
    "can_resume_training",
    "CHECKPOINT_DIR",
    "CHECKPOINT_EVERY",
    "coinciding",
    "coinciding_text",
    "COLORMAPS",
    "column_title",
    "combinations",
    "compare_estimate",
    "compare_methods",
    "compare_plan",
    "comparison_rows",
    "cost_rows",
    "costs",
    "curve_key",
    "curve_points",
    "curve_results",
    "CurvePoint",
    "curves_estimate",
    "curves_plan",
    "curves_so_far",
    "DEFAULT_BACKBONE",
    "default_choice",
    "DEFAULT_FILLS",
    "default_pair",
    "DEFAULT_STEPS",
    "DEMO",
    "DISCONNECTED_TTL_S",
    "duration_text",
    "Estimate",
    "evaluation_cost",
    "evaluation_thumbnails",
    "evaluation_work",
    "EvaluationConfig",
    "Explanation",
    "feature_sizes",
    "FILLS",
    "fills_text",
    "flat_map_warning",
    "forget_run",
    "ForwardProgress",
    "freeze_imported_objects",
    "GALLERY",
    "GETS_IT_WRONG",
    "HEAD_ENV",
    "hub_repo_id",
    "image_count",
    "image_total",
    "ImageLoadError",
    "Job",
    "JobContext",
    "JobPlan",
    "JobState",
    "JobStopped",
    "latest_preview",
    "layer_choices",
    "load_model",
    "load_sample",
    "LoadedModel",
    "loss_history",
    "map_key",
    "maps_so_far",
    "masks_to_measure",
    "MAX_HEAD_UPLOAD_MB",
    "MAX_THUMBNAIL_IMAGES",
    "MAX_UPLOAD_MB",
    "method_map",
    "method_names",
    "method_summary",
    "MethodMap",
    "metric_spec",
    "mispredicted",
    "missing",
    "ModelChoice",
    "MODES",
    "NEARLY_FLAT",
    "per_image_rows",
    "perturbed_image",
    "plain_reading",
    "plots",
    "public_message",
    "push_head",
    "read_upload",
    "RECIPES",
    "REFERENCE",
    "render",
    "ResultCache",
    "resumed_steps",
    "run_config",
    "run_outcome",
    "server_folder",
    "server_head",
    "server_path",
    "SessionFolder",
    "share_cpu_between_threads",
    "SPLITS",
    "start_evaluation",
    "start_training",
    "state_path",
    "STOPPED_BY_USER",
    "store_uploaded_head",
    "store_uploaded_weights",
    "Subject",
    "TABLE_COLUMNS",
    "TameError",
    "thumbnail_folder",
    "timed_in_turns",
    "total_steps",
    "TrainConfig",
    "training_config",
    "training_cost",
    "unpack_upload",
    "UPLOAD_TYPES",
    "VARIANTS",
    "WEIGHTS_ENV",
    "with_relative_times",
    "WITHIN_NOISE",
    "Workspace",
]
