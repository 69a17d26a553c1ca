"""Faithfulness metrics: AD/IC (and the map area to read them by), deletion/insertion curves, ROAD. Each module registers its metrics and their directions.

All work on torch tensors on the images' device, in batches; maps from any method are (B, H, W) and
are min-max normalised and upsampled to the input by the metrics themselves.
"""

# Importing a metric module registers its metrics; the order of registration is the table order.
from .adic import ADICResult, average_drop_increase  # isort: skip
from .area import map_area  # isort: skip
from .road import RoadResult, road  # isort: skip
from .curves import DEFAULT_FILLS, FILLS, CurveResult, curve_fills, deletion_insertion, stream_curve  # isort: skip
from .base import (
    DEFAULT_FRACTIONS, DEFAULT_ROAD_PERCENTAGES, MetricSpec, get_metric, list_metrics, register_metric, register_metric_family,
)
from .imputation import noisy_linear_impute

__all__ = [
    "ADICResult",
    "CurveResult",
    "DEFAULT_FILLS",
    "DEFAULT_FRACTIONS",
    "DEFAULT_ROAD_PERCENTAGES",
    "FILLS",
    "MetricSpec",
    "RoadResult",
    "average_drop_increase",
    "curve_fills",
    "deletion_insertion",
    "get_metric",
    "list_metrics",
    "map_area",
    "noisy_linear_impute",
    "register_metric",
    "register_metric_family",
    "road",
    "stream_curve",
]
