"""Evaluate explanation methods on a folder of images: the papers' faithfulness table, with costs.

:class:`EvaluationConfig` says what to measure; :func:`evaluate` runs it (resumably) and returns an
:class:`EvaluationReport`, which prints the table and writes JSON and CSV.
"""

from .config import METRIC_GROUPS, EvaluationConfig, metric_forwards
from .report import TABLE_COLUMNS, EvaluationReport, bootstrap_difference
from .run import Progress, evaluate, select_files

__all__ = [
    "METRIC_GROUPS",
    "TABLE_COLUMNS",
    "EvaluationConfig",
    "EvaluationReport",
    "Progress",
    "bootstrap_difference",
    "evaluate",
    "metric_forwards",
    "select_files",
]
