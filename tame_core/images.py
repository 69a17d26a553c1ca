"""Reading user images safely.

Users upload anything: phone photos with EXIF rotation, PNGs with alpha, 16-bit scans, CMYK
JPEGs, animated GIFs, files that are not images at all. :func:`load_image` turns each into an
upright 8-bit RGB picture or raises an :class:`~tame_core.errors.ImageLoadError` whose one-line
message names the file.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError
from .reading import read_regular

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]

#: File endings the CLI and the trainer pick up when they walk a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: Pillow's decompression-bomb threshold (about 89 megapixels): larger images are refused
#: before they are decoded, so a tiny file cannot make us allocate gigabytes.
MAX_PIXELS = 89_478_485

#: Largest image file read: an 89-megapixel 16-bit RGBA TIFF needs about 700 MB; larger files (an 8 GB
#: "photo", a sparse file) are refused before a byte is read.
MAX_IMAGE_FILE_BYTES = 1 * 2**30

#: Longest side, and most elongated shape (long side / short side), accepted. Preprocessing scales the
#: short side to the model's input size, so without them a 20000 x 1 PNG of 100 bytes would become a
#: 224 x 4,480,000 input (GBs) before anything could refuse it.
MAX_IMAGE_SIDE = 20_000
MAX_ASPECT_RATIO = 10.0

#: Key of :attr:`PIL.Image.Image.info` where :func:`load_image` records the upright size before a reduced decode.
ORIGINAL_SIZE = "tame_original_size"

#: White background for transparent pixels: what a viewer shows on a light page.
_BACKGROUND = (255, 255, 255)


def load_image(
    source: ImageSource,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    min_short_side: int | None = None,
    min_long_side: int = 1,
) -> Image.Image:
    """Open ``source`` as an upright 8-bit RGB image (EXIF orientation applied).

    ``name`` is what error messages call the file (defaults to the path, or ``<bytes>``). With
    ``min_short_side``, a JPEG is decoded reduced by DCT scaling (1/2, 1/4 or 1/8: Pillow's draft mode) as
    far as its short side stays at least that long (and its long side at least ``min_long_side``): a
    12-megapixel photo decodes in a fraction of the time when the model needs 224 px. Other formats decode whole. :func:`original_size` gives the picture's
    upright size before any reduction.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<image>")
    data = _read_bytes(source, label)
    if not data:
        raise ImageLoadError(f"{label}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"{label}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
                    f"{max_pixels / 1e6:.0f}-megapixel limit; downscale it first"
                )
            check_image_size(height, width, label)
            if getattr(image, "is_animated", False):
                image.seek(0)  # explain the first frame of an animation
            if min_short_side is not None:
                _draft(image, min_short_side, min_long_side)
            image.load()
            decoded = image.size
            ImageOps.exif_transpose(image, in_place=True)  # in place: no full-size copy of an upright picture
            upright = (width, height) if image.size == decoded else (height, width)
            if min_short_side is not None:  # any format: shrink before a conversion copies the full picture
                image = _reduced(image, min_short_side, min_long_side)
            image = to_rgb(image)
            image.info[ORIGINAL_SIZE] = (upright[1], upright[0])
            return image
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{label}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as error:  # Pillow refuses > 2x its limit before we see the size
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found[1]) / 1e6:.0f} megapixels, " if found else ""
        raise ImageLoadError(
            f"{label}: image is {size}over the {max_pixels / 1e6:.0f}-megapixel limit; downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        reason = " ".join(str(error).split()) or error.__class__.__name__
        raise ImageLoadError(f"{label}: corrupt or truncated image ({reason})") from None


def original_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) of the upright picture a :func:`load_image` result was decoded from (its own size
    when it was decoded whole, or for images that did not come from :func:`load_image`)."""
    height, width = image.info.get(ORIGINAL_SIZE, (image.height, image.width))
    return int(height), int(width)


def _scale(size: tuple[int, int], min_short_side: int, min_long_side: int) -> float:
    """The smallest scale of ``size`` whose short and long sides are still at least the ones asked."""
    if min_short_side < 1 or min_long_side < 1:
        raise ValueError(f"min_short_side and min_long_side must be at least 1, got {min_short_side}, {min_long_side}")
    return max(min_short_side / min(size), min_long_side / max(size))


def _draft(image: Image.Image, min_short_side: int, min_long_side: int) -> None:
    """Ask a JPEG decoder for the smallest DCT scale whose short and long sides are at least the ones asked."""
    scale = _scale(image.size, min_short_side, min_long_side)
    if image.format == "JPEG" and scale < 0.5:  # Pillow picks a scale whose size is at least the one asked
        image.draft(image.mode, (math.ceil(image.width * scale), math.ceil(image.height * scale)))


#: Modes Pillow's box :meth:`~PIL.Image.Image.reduce` averages as they are.
_REDUCIBLE = {"L", "RGB", "LA", "CMYK", "YCbCr", "I", "F", "RGBa", "La"}


def _reduced(image: Image.Image, min_short_side: int, min_long_side: int) -> Image.Image:
    """``image`` box-averaged by the largest whole factor that keeps the sides asked, in its own mode, so that
    a decoded 88-megapixel PNG is the only full-size copy (the conversions that follow work on the small one).

    Transparent pictures are averaged premultiplied (what :func:`to_rgb`'s white background then shows), 16-bit
    ones in 16 bits, palette and 1-bit ones after a conversion to what their pixels mean."""
    factor = int(1 / _scale(image.size, min_short_side, min_long_side))
    if factor < 2:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(image)
        small = cv2.resize(pixels, (image.width // factor, image.height // factor), interpolation=cv2.INTER_AREA)
        reduced = Image.fromarray(small.astype(np.uint16))  # native order: mode "I;16"
    else:
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode == "1":
            image = image.convert("L")
        if image.mode in ("RGBA", "PA"):
            image = image.convert("RGBa")
        if image.mode not in _REDUCIBLE:
            image = image.convert("RGB")
        reduced = image.reduce(factor)
        if reduced.mode in ("RGBa", "La"):
            reduced = reduced.convert("RGBA" if reduced.mode == "RGBa" else "LA")
    return reduced


def check_image_size(height: int, width: int, label: str = "image") -> None:
    """Refuse a picture with no pixels, a side over :data:`MAX_IMAGE_SIDE`, or one too thin to resize safely."""
    if height < 1 or width < 1:
        raise ImageLoadError(f"{label}: {width}x{height} has no pixels")
    if max(height, width) > MAX_IMAGE_SIDE:
        raise ImageLoadError(f"{label}: {width}x{height} has a side over the {MAX_IMAGE_SIDE}-pixel limit; downscale it first")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageLoadError(
            f"{label}: {width}x{height} is too thin to explain (aspect ratio {_over(ratio, MAX_ASPECT_RATIO)}:1, over the "
            f"{MAX_ASPECT_RATIO:g}:1 limit); crop it first"
        )


def _over(value: float, limit: float) -> str:
    """``value`` with as many decimals as it takes to read as over ``limit`` (10.004, not 10)."""
    for decimals in range(6):
        text = f"{value:.{decimals}f}"
        if float(text) > limit:
            return text
    return f"{value:g}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping 16-bit data or showing hidden pixels."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _high_depth_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit integer or float samples to 0..255 by their format's range."""
    values = array.astype(np.float64)
    if array.dtype.kind == "f":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if values.max(initial=0) > 255 or array.dtype.itemsize == 2 else 255.0
    return np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a ``uint8`` tensor of shape (3, H, W)."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def tensor_to_pixels(images01: torch.Tensor) -> np.ndarray:
    """Raw [0, 1] images, (3, H, W) or (B, 3, H, W) on any device, as RGB ``uint8`` (H, W, 3) or
    (B, H, W, 3) on the host: what overlays and the app draw."""
    return (images01.clamp(0, 1) * 255 + 0.5).byte().movedim(-3, -1).cpu().numpy()


def find_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted, hidden files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageLoadError(f"{root}: not a folder")
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def collect_images(sources: str | os.PathLike | list[str | os.PathLike] | tuple) -> list[Path]:
    """The image files of several sources, in the order given: each a folder (:func:`find_images`) or a
    list file (``.txt``: one path per line, relative to the list file's folder; ``#`` starts a comment)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files.extend(find_images(source))
        elif source.is_file() and source.suffix.lower() == ".txt":
            lines = (line.split("#", 1)[0].strip() for line in source.read_text().splitlines())
            listed = [source.parent / line for line in lines if line]
            missing = [str(path) for path in listed if not path.is_file()]
            if missing:
                raise ImageLoadError(f"{source}: {len(missing)} listed files do not exist (first: {missing[0]})")
            files.extend(listed)
        else:
            raise ImageLoadError(f"{source}: not a folder or a .txt list of image files")
    return files


def _read_bytes(source: ImageSource, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):  # a regular file of bounded size: never a FIFO or /dev/zero
        return read_regular(source, MAX_IMAGE_FILE_BYTES, ImageLoadError, label, noun="image")
    if not callable(getattr(source, "read", None)):
        raise ImageLoadError(f"{label}: expected a file path, bytes or a binary file, got {type(source).__name__}")
    data = source.read()
    if not isinstance(data, (bytes, bytearray)):
        raise ImageLoadError(f"{label}: the file gives {type(data).__name__}, not bytes; open it in binary mode ('rb')")
    return bytes(data)
