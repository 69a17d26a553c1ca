"""Faithfulness metrics: AD/IC, deletion/insertion curves, ROAD. Each declares its direction in METRICS.

All work on torch tensors on the images' device, in batches; maps from any method are (B, H, W) and
are min-max normalised and upsampled to the input by the metrics themselves.
"""

from .adic import ADICResult, average_drop_increase
from .base import DEFAULT_FRACTIONS, DEFAULT_ROAD_PERCENTAGES, METRICS, MetricSpec, spec_for
from .curves import BASELINES, CurveResult, deletion_insertion, stream_curve
from .imputation import noisy_linear_impute
from .road import RoadResult, road

__all__ = [
    "ADICResult",
    "BASELINES",
    "CurveResult",
    "DEFAULT_FRACTIONS",
    "DEFAULT_ROAD_PERCENTAGES",
    "METRICS",
    "MetricSpec",
    "RoadResult",
    "average_drop_increase",
    "deletion_insertion",
    "noisy_linear_impute",
    "road",
    "spec_for",
    "stream_curve",
]
