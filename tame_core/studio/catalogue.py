"""What the app offers to choose from: backbones, explanation methods and metrics.

Pages ask here rather than the registries themselves, so a change in how :mod:`tame_core.backbones`,
:mod:`tame_core.methods` or :mod:`tame_core.metrics` list their entries is absorbed in this one place.
"""

from __future__ import annotations

from ..backbones import list_backbones
from ..methods import get_method, list_methods
from ..metrics import MetricSpec, get_metric


def backbone_names() -> list[str]:
    """Every registered backbone's name, sorted."""
    return list(list_backbones())


def method_names() -> list[str]:
    """Every explanation method's name, TAME first."""
    return list(list_methods())


def method_summary(name: str) -> str:
    """What a method is, without its name (``"gradient-weighted class activation map"``), for a picker."""
    return get_method(name).description.split(": ", 1)[-1]


def metric_spec(name: str) -> MetricSpec:
    """A reported metric's spec (direction, arrow), numbered families included (``AD37``)."""
    return get_metric(name)
