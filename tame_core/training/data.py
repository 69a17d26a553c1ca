"""Training images: any folder (recursive), narrowed to a split (:mod:`tame_core.splits`), seeded augmentation.

No labels are needed (the target is the frozen classifier's own prediction), so a dataset is just
the readable images below a folder. Every random choice of an epoch (order and augmentation) is a
function of (seed, epoch, image), so a resumed run sees exactly the batches the first run would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import InterpolationMode, v2

from ..errors import ImageLoadError, TrainingError
from ..images import collect_images, image_to_tensor, load_image
from ..preprocessing import Preprocess
from ..splits import split_files

log = logging.getLogger("tame_core.training")

#: ``standard``: the papers' resize + random crop + flip; ``heavy`` adds scale, aspect and colour
#: changes (more distinct views of few images); ``none``: the classifier's own centre crop.
AUGMENTATIONS = ("none", "standard", "heavy")


def build_transform(preprocess: Preprocess, augment: str = "standard") -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (3, H, W) picture -> float [0, 1] model input at the classifier's input size."""
    if augment not in AUGMENTATIONS:
        raise TrainingError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return lambda image: preprocess.to_input(image, "crop")
    size = list(preprocess.input_size)
    mode = InterpolationMode(preprocess.interpolation)
    if augment == "standard":
        steps = [
            v2.Resize(int(min(size) / preprocess.crop_pct), interpolation=mode, antialias=True),
            v2.RandomCrop(size, pad_if_needed=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.05)], p=0.8),
            v2.RandomGrayscale(p=0.1),
        ]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of image ``index`` in ``epoch``: well mixed, the same on every run."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageFiles(Dataset):
    """Images by file; an item is (index, augmentation seed) as :class:`EpochSampler` yields them."""

    def __init__(
        self, files: Sequence[Path], transform: Callable[[torch.Tensor], torch.Tensor], min_short_side: int | None = None
    ) -> None:
        self.files = list(files)
        self.transform = transform
        self.min_short_side = min_short_side  # reduced JPEG decode (see ``Preprocess.decode_short_side``)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        picture = image_to_tensor(load_image(self.files[index], min_short_side=self.min_short_side))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(picture)


class EpochSampler(Sampler):
    """This rank's share of an epoch in seeded order (torch's DistributedSampler), with seeds, from an offset."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.base = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, leaving out its first ``skip`` samples (already trained on before a resume)."""
        self.base.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.base):
            if position >= self.skip:
                yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def readable_images(
    sources: str | Path | Sequence[str | Path], split: str = "all", limit: int | None = None, rank: int = 0, world: int = 1
) -> tuple[list[Path], list[str]]:
    """The images of ``sources`` (folders or list files) that load, and one message per file that does not
    (logged as a warning).

    With several ranks each checks its share and the caller merges the results (see ``distributed``).
    """
    try:
        files = split_files(collect_images(sources), split)
    except ImageLoadError as error:
        raise TrainingError(f"--data {error}") from None
    if limit is not None:
        files = files[:limit]
    problems = []
    for position, path in enumerate(files):
        if position % world != rank:
            continue
        try:
            load_image(path, min_short_side=1)  # the smallest decode still reads every byte of the file
        except ImageLoadError as error:
            problems.append(str(path))
            log.warning("skipping %s", error)
    return files, problems
