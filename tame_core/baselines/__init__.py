"""Explanation methods behind one interface: TAME, the Grad-CAM family (pytorch-grad-cam) and RISE.

``explain_with(method, explainer, images01, classes, **options)`` returns a :class:`MethodResult`:
(B, H, W) maps in [0, 1], forward and backward passes per image (counted with hooks), wall seconds.
"""

from . import tame  # noqa: F401  (registration order is table order: TAME, the CAM family, RISE)
from . import cam  # noqa: F401
from . import rise  # noqa: F401
from .base import Method, MethodResult, PassCounter, explain_with, get_method, list_methods, register_method

__all__ = ["Method", "MethodResult", "PassCounter", "explain_with", "get_method", "list_methods", "register_method"]
