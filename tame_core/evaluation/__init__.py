"""Evaluate explanation methods on a folder of images: the papers' faithfulness table, with costs.

:class:`EvaluationConfig` says what to measure; :func:`evaluate` runs it (resumably) and returns an
:class:`EvaluationReport`, which prints the table and writes JSON and CSV.
"""

from .config import EvaluationConfig
from .groups import METRIC_GROUPS, MetricGroup, get_metric_group, list_metric_groups, metric_forwards, metric_imputations, register_metric_group
from .report import TABLE_COLUMNS, EvaluationReport, bootstrap_difference
from .run import Progress, evaluate, select_files

__all__ = [
    "METRIC_GROUPS",
    "TABLE_COLUMNS",
    "EvaluationConfig",
    "EvaluationReport",
    "MetricGroup",
    "Progress",
    "bootstrap_difference",
    "evaluate",
    "get_metric_group",
    "list_metric_groups",
    "metric_forwards",
    "metric_imputations",
    "register_metric_group",
    "select_files",
]
