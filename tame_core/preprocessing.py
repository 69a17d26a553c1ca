"""From pictures to the classifier's input, on the model's device.

Everything downstream (head, metrics, training) works on **raw [0, 1] images** at the model's input
size; normalisation with the classifier's mean/std happens inside :class:`~tame_core.backbones.Backbone`.
That is what lets TAME multiply the raw image by a map before normalising, as the papers do.

Two geometries:

* ``"crop"``: the classifier's own evaluation transform (resize the shorter side to
  ``size / crop_pct``, centre crop). Training and the paper metrics use it.
* ``"full"``: the whole picture, shorter side resized to the input size and the aspect ratio kept
  (squashed to the input size for models that only take one size, such as ViTs), so the map covers
  everything the user uploaded. An image already at the input size passes through unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .errors import ImageLoadError, OptionError
from .images import check_image_size, image_to_tensor, to_rgb
from .maps import resize_maps

Geometry = Literal["crop", "full"]
GEOMETRIES: tuple[str, ...] = ("crop", "full")
#: What :meth:`~tame_core.explainer.Explainer.explain` also takes as ``geometry``: the images are model
#: inputs already ((B, 3, H, W) floats in [0, 1], as metrics and training previews hold them).
INPUT = "input"

_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    """How a classifier wants its input: size, resampling, crop and normalisation."""

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    fixed_input_size: bool = False

    def __post_init__(self) -> None:
        size = self.input_size
        if not (isinstance(size, tuple) and len(size) == 2 and all(_whole(v) and 8 <= v <= 8192 for v in size)):
            raise ValueError(f"input_size must be (height, width), whole numbers from 8 to 8192, got {size!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not (isinstance(values, tuple) and len(values) == 3 and all(_real(v) for v in values)):
                raise ValueError(f"{name} must be three finite numbers (red, green, blue), got {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be above 0, got {self.std!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    # --- metadata round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        """From a card or user options; any field that is wrong is a ValueError saying which."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("input_size", "mean", "std"):
            if key in known:
                if not isinstance(known[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list, got {known[key]!r}")
                known[key] = tuple(known[key])
        if not isinstance(known.get("crop_pct", 0.5), (int, float)) or isinstance(known.get("crop_pct"), bool):
            raise ValueError(f"crop_pct must be a number, got {known['crop_pct']!r}")
        return cls(**known)

    # --- geometry ------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int, geometry: Geometry) -> tuple[int, int]:
        """Size (H, W) of the model input made from an image of ``height`` x ``width``."""
        check_geometry(geometry)
        if geometry == "crop" or self.fixed_input_size:
            return self.input_size
        short = min(self.input_size)
        scale = short / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    @property
    def decode_short_side(self) -> int:
        """Short side a reduced JPEG decode keeps (``load_image(min_short_side=...)``): twice the largest
        side any geometry resizes to, so the one resize to the model's input still has detail to average."""
        return 2 * max(max(self.input_size), int(min(self.input_size) / self.crop_pct))

    def to_input(self, image: torch.Tensor, geometry: Geometry = "full") -> torch.Tensor:
        """One image (3, H, W), ``uint8`` or float in [0, 1], to a float [0, 1] model input."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ImageLoadError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        mode = _INTERPOLATIONS[self.interpolation]
        if geometry == "crop":
            scale_short = int(min(self.input_size) / self.crop_pct)
            image = TF.resize(image, [scale_short], interpolation=mode, antialias=True)
            image = TF.center_crop(image, list(self.input_size))
        else:
            target = self.resized_size(height, width, geometry)
            if (height, width) != target:
                image = TF.resize(image, list(target), interpolation=mode, antialias=True)
        if image.dtype == torch.uint8:
            return image.float().div_(255.0)
        return image.float().clamp_(0.0, 1.0)

    def batch(
        self, images: Sequence[torch.Tensor], geometry: Geometry = "full", device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Several images to one (B, 3, H, W) batch; they must come out at the same size."""
        inputs = [self.to_input(image.to(device) if device is not None else image, geometry) for image in images]
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) > 1:
            raise OptionError(
                f"images of different aspect ratios give inputs of different sizes {sorted(shapes)} in "
                f"'{geometry}' geometry; explain them in separate batches or use geometry='crop'"
            )
        return torch.stack(inputs)

    def crop_box(self, height: int, width: int, geometry: Geometry) -> tuple[float, float, float, float]:
        """The region (top, left, bottom, right) of the original image that the model input shows."""
        if geometry == "full":
            return 0.0, 0.0, float(height), float(width)
        scale = int(min(self.input_size) / self.crop_pct) / min(height, width)
        crop_h, crop_w = self.input_size[0] / scale, self.input_size[1] / scale
        top, left = (height - crop_h) / 2, (width - crop_w) / 2
        return top, left, top + crop_h, left + crop_w


    def map_on_picture(self, saliency: torch.Tensor, height: int, width: int, geometry: Geometry) -> np.ndarray:
        """A map (h, w) of a model input, as float32 (``height``, ``width``) over the original picture.

        In ``"full"`` geometry the map covers the whole picture; in ``"crop"`` it covers the centre crop
        the classifier saw, and the rest of the picture is 0.
        """
        if geometry == "full":
            return resize_maps(saliency, (height, width)).clamp_(0, 1).float().cpu().numpy()
        top, left, bottom, right = self.crop_box(height, width, "crop")
        canvas = np.zeros((height, width), dtype=np.float32)
        y0, x0 = max(0, round(top)), max(0, round(left))
        y1, x1 = min(height, round(bottom)), min(width, round(right))
        patch = resize_maps(saliency, (round(bottom) - round(top), round(right) - round(left))).float().cpu().numpy()
        canvas[y0:y1, x0:x1] = patch[y0 - round(top) : y1 - round(top), x0 - round(left) : x1 - round(left)]
        return np.clip(canvas, 0, 1)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: Largest side of a model input given directly (geometry "input"): a 3000x3000 input would need tens of
#: GB of activations; pictures of any size go through geometry "full" or "crop" instead.
MAX_INPUT_SIDE = 2_048


def model_inputs(images: Any, device: torch.device) -> torch.Tensor:
    """Images that are model inputs already, on ``device``: a (B, 3, H, W) float tensor in [0, 1], at most
    :data:`MAX_INPUT_SIDE` a side, all finite (one ``isfinite`` reduction: a single sync per batch)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ImageLoadError(f"geometry '{INPUT}' takes model inputs: a (B, 3, H, W) float tensor in [0, 1], got {shape}")
    if not len(images):
        raise ImageLoadError("no images given (a batch tensor of 0 images)")
    height, width = images.shape[-2:]
    if max(height, width) > MAX_INPUT_SIDE:
        raise ImageLoadError(
            f"geometry '{INPUT}' takes model inputs up to {MAX_INPUT_SIDE} pixels a side, got {width}x{height}; "
            "resize them, or pass pictures with geometry 'full' or 'crop'"
        )
    check_image_size(height, width)
    _check_values(images)
    return images.to(device)


class Pictures(list):
    """(3, H, W) tensors that :func:`as_image_tensors` has checked (or items of its results, regrouped):
    given to it again, as :meth:`~tame_core.explainer.Explainer.explain` does, they are not checked twice."""


def as_image_tensors(images: Any) -> Pictures:
    """Normalise what users pass (PIL, numpy, tensors; one or many) to a list of (3, H, W) tensors.

    numpy arrays are HxW, HxWx1, HxWx3 or HxWx4 (``uint8``, or floats in [0, 1]); tensors are
    (3, H, W) or (B, 3, H, W), ``uint8`` or floats in [0, 1]. Anything else, an empty list, NaN values
    or a picture too thin to resize safely is an :class:`~tame_core.errors.ImageLoadError`.
    :class:`Pictures` (what it returns) come back as they are.
    """
    if isinstance(images, Pictures):
        if not images:
            raise ImageLoadError("no images given")
        return images
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            if not len(images):
                raise ImageLoadError("no images given (a batch tensor of 0 images)")
            _tensor_image(images[0])  # shape and size check; the range check below covers the whole batch once
            _check_range(images)
            return Pictures(images.unbind(0))
        return Pictures([_tensor_image(images)])
    if isinstance(images, (Image.Image, np.ndarray)):
        return Pictures([_one(images)])
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageLoadError("no images given")
        return Pictures(_one(image) for image in images)
    raise ImageLoadError(f"images must be PIL images, numpy arrays or tensors, got {type(images).__name__}")


def _one(image: Any) -> torch.Tensor:
    if isinstance(image, Image.Image):
        check_image_size(image.height, image.width)
        return image_to_tensor(to_rgb(image))
    if isinstance(image, np.ndarray):
        return _numpy_image(image)
    if isinstance(image, torch.Tensor):
        return _tensor_image(image)
    raise ImageLoadError(f"images must be PIL images, numpy arrays or tensors, got {type(image).__name__}")


def _numpy_image(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageLoadError(f"numpy image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8 and array.dtype.kind not in "fb":
        raise ImageLoadError(f"numpy image of dtype {array.dtype}: give uint8 (0..255) or floats in [0, 1]")
    check_image_size(array.shape[0], array.shape[1])
    if array.shape[2] == 4:
        return image_to_tensor(to_rgb(Image.fromarray(_as_uint8(array), mode="RGBA")))
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype == np.uint8:
        array = np.ascontiguousarray(array) if array.flags.writeable else array.copy()  # torch wants writable memory
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return _tensor_image(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1))


def _tensor_image(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ImageLoadError(f"tensor image must be (3, H, W) or (B, 3, H, W), got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise ImageLoadError(f"tensor image of dtype {tensor.dtype}: give uint8 (0..255) or floats in [0, 1]")
    check_image_size(tensor.shape[-2], tensor.shape[-1])
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    _check_range(tensor)
    return tensor


def _check_values(tensor: torch.Tensor) -> None:
    """The one check of a tensor's values that every geometry makes: real values (not on PyTorch's ``meta``
    device, which holds none), all finite. One reduction, so one device sync per batch."""
    if tensor.device.type == "meta":
        raise ImageLoadError("the image tensor is on the 'meta' device, which holds no values; pass a real tensor")
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ImageLoadError("image holds NaN or infinite values")


def _check_range(tensor: torch.Tensor) -> None:
    if tensor.device.type == "meta" or (tensor.dtype != torch.uint8 and tensor.numel()):
        _check_values(tensor)
    if tensor.dtype == torch.uint8 or not tensor.numel():
        return
    low, high = torch.aminmax(tensor.detach())
    if float(low) < -1e-3 or float(high) > 1 + 1e-3:
        raise ImageLoadError("float image tensors must hold values in [0, 1] (raw, not normalised)")


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return np.clip(array.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise OptionError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
