"""Freely licensed sample photos that ship with installed packages: the gallery and the demo set.

Every photo here is public domain or CC0 and comes from a package the app already installs
(scikit-image's data, and matplotlib's sample data, which pytorch-grad-cam depends on), so nothing
is downloaded and no photo of ours is committed.

:data:`GALLERY` is what the Explain page offers to try (some of those pictures fool the classifier,
which is worth exploring). :data:`DEMO` is the curated set Demo mode presents: each one checked to be
predicted as its stated class by the embedded EfficientNet-Lite0 (``tests/test_samples.py``), with a
map on the object.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageLoadError
from .images import ActiveImage, active_image
from .models import LoadedModel


@dataclass(frozen=True)
class Sample:
    """A freely licensed photo from an installed package, optionally cropped to its subject."""

    key: str
    title: str
    credit: str
    source: str  # "skimage:<function>" or "matplotlib:<file in mpl-data/sample_data>"
    crop: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) in the original's pixels
    expected: int | None = None  # the ImageNet class the embedded classifier gives it (demo samples)
    shows: tuple[int, ...] = ()  # ImageNet classes a right answer would be, when ImageNet has one

    @property
    def stated(self) -> tuple[int, ...]:
        """The classes a right answer would be: ``shows``, else ``expected``, else none (nothing to judge)."""
        return self.shows or ((self.expected,) if self.expected is not None else ())

    @property
    def available(self) -> bool:
        return _locate(self.source) is not None


def _locate(source: str) -> Path | str | None:
    """Where a sample's pixels come from, or None when the package that ships it is not installed."""
    package, _, name = source.partition(":")
    if package == "skimage":
        return name if importlib.util.find_spec("skimage") is not None else None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / name
    return path if path.is_file() else None


def _pixels(sample: Sample) -> np.ndarray:
    located = _locate(sample.source)
    if located is None:
        raise ImageLoadError(f"sample {sample.key!r}: {sample.source.split(':')[0]} is not installed")
    if isinstance(located, Path):
        with Image.open(located) as picture:
            pixels = np.asarray(picture.convert("RGB"))
    else:
        from skimage import data

        pixels = np.asarray(getattr(data, located)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if sample.crop is not None:
        top, bottom, left, right = sample.crop
        pixels = pixels[top:bottom, left:right]
    return np.ascontiguousarray(pixels[:, :, :3])


_ALL = (
    Sample("chelsea", "Chelsea the cat", "Stefan van der Walt, CC0", "skimage:chelsea", expected=285, shows=(281, 282, 285)),
    Sample("coffee", "Cup of coffee", "Rachel Michetti, CC0", "skimage:coffee", expected=967, shows=(967, 968, 504)),
    Sample("camera", "Cameraman", "Lav Varshney, CC0", "skimage:camera", expected=872, shows=(872, 759, 732)),
    Sample(
        "grace_hopper",
        "Grace Hopper",
        "James S. Davis, U.S. Navy, public domain (matplotlib's sample data)",
        "matplotlib:grace_hopper.jpg",
        expected=652,
    ),
    Sample("rocket", "Falcon 9 launch", "SpaceX, public domain", "skimage:rocket", shows=(657, 744, 812)),
    Sample("astronaut", "Astronaut Eileen Collins", "NASA, public domain", "skimage:astronaut"),  # ImageNet has no astronaut
)

#: The Explain page's samples, in showing order (those whose package is installed).
GALLERY: dict[str, Sample] = {sample.key: sample for sample in _ALL if sample.available}

#: Demo mode's curated set, in showing order: predicted as ``expected`` by the embedded classifier, maps on
#: the object (the cat last: it fills its frame, so its map covers most of the picture).
DEMO: dict[str, Sample] = {
    key: GALLERY[key] for key in ("coffee", "grace_hopper", "camera", "chelsea") if key in GALLERY
}


@lru_cache(maxsize=len(_ALL))
def load_sample(key: str) -> ActiveImage:
    """A sample photo as an :class:`ActiveImage`, read from the installed package (no files of ours)."""
    if key not in GALLERY:
        raise ImageLoadError(f"no sample called {key!r}; choose one of {', '.join(GALLERY)}")
    sample = GALLERY[key]
    return active_image(_pixels(sample), sample.title, "sample")


#: The label of a sample the model gets wrong: worth exploring, said so.
GETS_IT_WRONG = "the model gets this wrong: see why"
_WRONG: dict[object, frozenset[str]] = {}
_JUDGING = threading.Lock()


def mispredicted(model: LoadedModel) -> frozenset[str]:
    """The gallery samples whose top-1 class (the whole picture, as Explain shows it) is none of their
    stated classes; samples with no stated class, and models without ImageNet's classes, are not judged.
    One backbone run per judged sample, once per model and process."""
    if not model.knows_imagenet:
        return frozenset()
    with _JUDGING:
        if model.key not in _WRONG:
            judged = [key for key, sample in GALLERY.items() if sample.stated]
            tops = [int(model.explain(load_sample(key).pixels).classes[0, 0]) for key in judged]
            _WRONG[model.key] = frozenset(k for k, top in zip(judged, tops) if top not in GALLERY[k].stated)
        return _WRONG[model.key]
