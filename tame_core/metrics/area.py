"""Map area: a map's mean value at the input, the share of the image that AD/IC's soft masks keep.

Why it is reported: AD and IC multiply the image by the map, so a bigger map keeps more of the image and
wins them without ranking pixels any better (a map of ones has AD 0). Read AD/IC beside the area;
deletion and insertion only rank pixels, so the area does not move them.
"""

from __future__ import annotations

import torch

from .base import MetricSpec, prepare, register_metric

AREA = MetricSpec("area", "neither", "the map's mean value at the input (%): how much of the image AD/IC keep; a bigger map wins them")
register_metric(AREA)


def map_area(images01: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Per image (B,): the mean of the min-max normalised map at the input's size, in %, as AD100 masks with it."""
    _, prepared, _ = prepare(images01, maps, 0)
    return prepared.mean(dim=(1, 2)) * 100.0
