"""Stopping long work within a fraction of a second: a stop flag checked inside every forward pass.

RISE, Score-CAM, Ablation-CAM and every faithfulness metric spend their time in batches of backbone
forwards, some of them inside libraries without a stop hook (pytorch-grad-cam). :func:`stop_on`
puts forward pre-hooks on the backbone and its blocks, so a set ``threading.Event`` raises
:class:`Stopped` at the next block of the next forward, wherever that forward comes from. The hooks
only act on the thread that installed them: a shared model keeps serving other threads untouched.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from torch import nn

#: Modules this many levels below the watched one (and above) check the flag: the blocks of a CNN or
#: ViT, so a stop waits for one block, not for a whole batch of forwards.
CHECK_DEPTH = 3


class Stopped(Exception):
    """Work ended early because its stop flag was set (not an error: what was finished is kept)."""


def check(stop: threading.Event | None) -> None:
    """Raise :class:`Stopped` when ``stop`` is set."""
    if stop is not None and stop.is_set():
        raise Stopped()


@contextlib.contextmanager
def stop_on(
    module: nn.Module, stop: threading.Event | None, on_forward: Callable[[int], None] | None = None
) -> Iterator[None]:
    """While active, forwards of ``module`` on this thread raise :class:`Stopped` once ``stop`` is set.

    ``on_forward(images)`` is called as each forward of ``module`` starts (a live count of the work
    done, for progress). Hooks are always removed on exit, also when :class:`Stopped` is raised.
    """
    owner = threading.get_ident()

    def checked(sub: nn.Module, args: tuple) -> None:
        if threading.get_ident() == owner:
            check(stop)

    def counted(sub: nn.Module, args: tuple) -> None:
        if threading.get_ident() != owner:
            return
        check(stop)
        if on_forward is not None and args and hasattr(args[0], "shape"):
            on_forward(int(args[0].shape[0]))

    handles = [module.register_forward_pre_hook(counted)]
    if stop is not None:
        for name, sub in module.named_modules():
            if name and name.count(".") < CHECK_DEPTH:
                handles.append(sub.register_forward_pre_hook(checked))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
