"""Faithfulness metrics: AD/IC, deletion/insertion curves, ROAD. Each declares its direction in METRICS.

All work on torch tensors on the model's device, in batches; maps from any method are (B, H, W).
"""

from .adic import ADICResult, average_drop_increase
from .base import DEFAULT_FRACTIONS, DEFAULT_ROAD_PERCENTAGES, METRICS, MetricSpec, spec_for

__all__ = [
    "ADICResult",
    "DEFAULT_FRACTIONS",
    "DEFAULT_ROAD_PERCENTAGES",
    "METRICS",
    "MetricSpec",
    "average_drop_increase",
    "spec_for",
]
