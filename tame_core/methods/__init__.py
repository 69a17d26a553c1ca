"""Explanation methods behind one interface: TAME, the Grad-CAM family (pytorch-grad-cam) and RISE.

``explain_with(explainer, images01, classes, method, **options)`` returns a :class:`MethodResult`:
(B, H, W) maps in [0, 1], forward and backward passes per image (counted with hooks), wall seconds.
"""

# Importing a module registers its methods; the order of registration is the table order.
from . import tame  # isort: skip  # noqa: F401
from . import cam  # isort: skip  # noqa: F401
from . import rise  # isort: skip  # noqa: F401
from .base import Method, MethodResult, PassCounter, explain_with, get_method, list_methods, register_method

__all__ = ["Method", "MethodResult", "PassCounter", "explain_with", "get_method", "list_methods", "register_method"]
