"""One interface for every explanation method: maps, passes counted, wall time measured.

A :class:`Method` subclass implements :meth:`Method.compute` (images and classes in, (B, h, w) maps
out); the base class checks the inputs and options, counts the images that went forward (and
backward) through the backbone with hooks on it, times the call (synchronising the device), and turns
the maps into (B, H, W) in [0, 1] at the input size. So the counts are measured, not declared; each
method also states the counts it will make (:meth:`Method.expected_passes`), so a cost can be
estimated before the work starts, and tests hold the two together.

A time is the method's own work only when caches are warm: :func:`warm_up` runs a cheap method once,
untimed, before it is timed, and :func:`timed_repeats` times a cheap method several times.
"""

from __future__ import annotations

import difflib
import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar, Union

import torch
from torch import nn

from ..backbones import Backbone
from ..errors import EvaluationError
from ..explainer import Explainer
from ..maps import minmax_normalize, resize_maps
from ..metrics.base import MetricSpec, register_metric

# What a method costs is reported beside the metrics of its maps.
register_metric(
    MetricSpec("ms_per_image", "lower", "wall time of the explanation method per image (milliseconds)"),
    MetricSpec("forward_passes", "lower", "backbone forward passes per image made by the explanation method"),
    MetricSpec("backward_passes", "lower", "backward passes per image made by the explanation method"),
)
from ..batching import class_vector

Model = Union[Explainer, Backbone]


@dataclass
class MethodResult:
    """Maps (B, H, W) in [0, 1] at input size, passes per image through the backbone, wall seconds."""

    maps: torch.Tensor
    forward_passes: float
    backward_passes: float
    seconds: float
    #: Wall seconds of each timed run when the method was timed several times (``seconds`` is their median).
    repeats: tuple[float, ...] = ()

    @property
    def ms_per_image(self) -> float:
        return self.seconds * 1000.0 / max(1, self.maps.shape[0])


class PassCounter:
    """Counts images going forward through a module, and backward through its output, while active."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.forwards = 0
        self.backwards = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> "PassCounter":
        self._handle = self.module.register_forward_hook(self._count)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _count(self, module: nn.Module, args: tuple, output: object) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        self.forwards += args[0].shape[0]
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._count_backward)

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += grad.shape[0]


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall times measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Method:
    """An explanation method; subclasses set ``name`` and implement :meth:`compute`."""

    name: str = ""
    description: str = ""
    needs_head: bool = False

    def compute(self, explainer: Model, images01: torch.Tensor, classes: torch.Tensor, **options: Any) -> torch.Tensor:
        """Maps (B, h, w) for ``classes`` (B,) of raw [0, 1] ``images01`` (B, 3, H, W) on the device."""
        raise NotImplementedError

    def expected_passes(self, explainer: Model, **options: Any) -> tuple[int, int]:
        """(forward, backward) passes per image :meth:`compute` will make with these options."""
        return 1, 0

    def forward_batch(self, explainer: Model, **options: Any) -> int | None:
        """Images per forward of the passes it makes, for the methods that make many (None: the image batch).
        A CPU forward's time per image depends on it (cache): the cost estimates measure at this batch."""
        return None

    def options(self) -> list[str]:
        """The keyword options :meth:`compute` takes."""
        parameters = inspect.signature(self.compute).parameters.values()
        return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse keywords :meth:`compute` does not take, naming the ones it does."""
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            accepted = ", ".join(self.options()) or "none"
            raise EvaluationError(f"method {self.name!r} has no option {unknown[0]!r} (its options: {accepted})")

    def __call__(
        self,
        explainer: Model,
        images01: torch.Tensor,
        classes: torch.Tensor | Sequence[int] | int,
        **options: Any,
    ) -> MethodResult:
        backbone = explainer.backbone if isinstance(explainer, Explainer) else explainer
        if self.needs_head and not isinstance(explainer, Explainer):
            raise EvaluationError(f"method {self.name!r} needs an Explainer (a backbone with a trained head)")
        self.check_options(options)
        if not isinstance(images01, torch.Tensor) or images01.ndim != 4 or images01.shape[1] != 3:
            raise EvaluationError("images must be a (B, 3, H, W) tensor of raw [0, 1] pixels")
        device = backbone.device
        images01 = images01.to(device, torch.float32)
        classes = class_vector(classes, images01.shape[0], device)
        if int(classes.min()) < 0 or int(classes.max()) >= backbone.num_classes:
            raise EvaluationError(f"class indices must be in 0..{backbone.num_classes - 1}")
        with PassCounter(backbone.net) as counter:
            synchronize(device)
            start = time.perf_counter()
            maps = self.compute(explainer, images01, classes, **options)
            maps = resize_maps(minmax_normalize(maps.to(device).float()), images01.shape[-2:]).clamp_(0.0, 1.0)
            synchronize(device)
            seconds = time.perf_counter() - start
        batch = images01.shape[0]
        return MethodResult(maps, counter.forwards / batch, counter.backwards / batch, seconds)


_METHODS: dict[str, Method] = {}


M = TypeVar("M", bound=Union[Method, type])


def register_method(method: M) -> M:
    """Make ``method`` available by its name to :func:`explain_with`, the CLI and the app. Used on a
    :class:`Method` subclass (``@register_method``), it registers an instance of the class."""
    instance = method() if isinstance(method, type) else method
    if not instance.name or instance.name in _METHODS:
        raise ValueError(f"method name {instance.name!r} is empty or registered twice")
    _METHODS[instance.name] = instance
    return method


def list_methods() -> list[str]:
    """Method names in table order: TAME first, the Grad-CAM family, RISE."""
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The registered method called ``name``; an unknown name fails in one line, with the closest names."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise EvaluationError(f"unknown method {name!r}{hint} (methods: {', '.join(_METHODS)})")
    return _METHODS[name]


#: Methods that need at most this many forwards per image are cheap: warmed up before timing, timed repeatedly.
CHEAP_FORWARDS = 2


def is_cheap(method: str, explainer: Model, **options: Any) -> bool:
    """Whether ``method`` makes only a pass or two per image (TAME, the gradient CAMs), not hundreds."""
    return get_method(method).expected_passes(explainer, **options)[0] <= CHEAP_FORWARDS


def warm_up(
    explainer: Model, images01: torch.Tensor, classes: torch.Tensor | Sequence[int] | int, method: str, **options: Any
) -> None:
    """Run a cheap method once on these images, untimed, so that its timed runs pay no one-off costs
    (first-call allocations, kernels built for a new batch shape: the first batch of 8 TAME maps took 3x
    the later ones). Expensive methods warm themselves up in their first batch of forwards; they are
    left alone."""
    if is_cheap(method, explainer, **options):
        explain_with(explainer, images01, classes, method, **options)


def timed_repeats(
    explainer: Model,
    images01: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | int,
    method: str,
    repeats: int = 5,
    min_seconds: float = 0.25,
    max_repeats: int = 20,
    **options: Any,
) -> MethodResult:
    """``method``'s result, timed as its own work: a cheap method is warmed up, then run at least
    ``repeats`` times (more, up to ``max_repeats``, until ``min_seconds`` have passed) and ``seconds``
    is the median run; an expensive method runs once. ``repeats`` holds every timed run."""
    if not is_cheap(method, explainer, **options):
        result = explain_with(explainer, images01, classes, method, **options)
        result.repeats = (result.seconds,)
        return result
    warm_up(explainer, images01, classes, method, **options)
    runs: list[MethodResult] = []
    while len(runs) < repeats or (sum(r.seconds for r in runs) < min_seconds and len(runs) < max_repeats):
        runs.append(explain_with(explainer, images01, classes, method, **options))
    seconds = tuple(r.seconds for r in runs)
    last = runs[-1]
    return MethodResult(last.maps, last.forward_passes, last.backward_passes, statistics.median(seconds), seconds)


def explain_with(
    explainer: Model,
    images01: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | int,
    method: str,
    **options: Any,
) -> MethodResult:
    """Explain ``images01`` (B, 3, H, W) for ``classes`` (B,) with the method called ``method``, in the
    order :meth:`Explainer.explain <tame_core.explainer.Explainer.explain>` takes images and classes.

    Example:
        >>> inputs = explainer.backbone.preprocess.batch([image_to_tensor(picture)], "crop")
        >>> result = explain_with(explainer, inputs, 281, "gradcam")  # 281: tabby
        >>> result.maps.shape, result.forward_passes, result.backward_passes
        (torch.Size([1, 224, 224]), 1.0, 1.0)
    """
    return get_method(method)(explainer, images01, classes, **options)
