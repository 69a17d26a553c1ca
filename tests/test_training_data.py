"""Training data: any folder, bad files skipped with one warning each, the project split, seeded epochs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core.classes import imagenet_wnids
from tame_core.preprocessing import Preprocess
from tame_core.training import (
    SPLITS,
    TrainingError,
    is_heldout_class,
    readable_images,
    split_files,
)
from tame_core.training.data import EpochSampler, ImageFiles, build_transform

PREPROCESS = Preprocess(input_size=(32, 32), crop_pct=0.875)


def write_images(folder: Path, count: int, size: tuple[int, int] = (40, 52)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / ("sub" if i % 2 else ".") / f"img{i}.{('png', 'jpg', 'webp')[i % 3]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path.resolve())
    return paths


def test_readable_images_walks_subfolders_and_skips_bad_files_with_one_warning_each(tmp_path, caplog):
    write_images(tmp_path, 5)
    (tmp_path / "notes.jpg").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("ignored: not an image suffix")
    with caplog.at_level(logging.WARNING, logger="tame_core.training"):
        files, skipped = readable_images(tmp_path)
    assert len(files) == 7 and sorted(Path(p).name for p in skipped) == ["empty.png", "notes.jpg"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert any("notes.jpg" in m and "not an image" in m for m in messages)


def test_readable_images_shares_the_check_between_ranks(tmp_path):
    write_images(tmp_path, 4)
    (tmp_path / "bad.jpg").write_text("x")
    results = [readable_images(tmp_path, rank=rank, world=2) for rank in (0, 1)]
    assert results[0][0] == results[1][0]  # every rank lists all files...
    assert len(results[0][1]) + len(results[1][1]) == 1  # ...and exactly one rank reports the bad one


def test_readable_images_names_a_missing_folder(tmp_path):
    with pytest.raises(TrainingError, match="not a folder"):
        readable_images(tmp_path / "nowhere")


def test_split_rule_holds_out_every_fifth_class():
    wnids = imagenet_wnids()
    files = [Path(f"{wnids[i]}_x.JPEG") for i in range(10)] + [Path("train") / wnids[14] / "photo.jpg"]
    assert [is_heldout_class(i) for i in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert split_files(files, "heldout") == [files[4], files[9], files[10]]
    assert len(split_files(files, "train")) == 8
    assert split_files(files, "all") == files
    with pytest.raises(TrainingError, match="WordNet"):
        split_files([Path("holiday.jpg")], "train")
    with pytest.raises(TrainingError, match="unknown split"):
        split_files(files, "test")
    assert SPLITS == ("all", "train", "heldout")
    # one split for training and evaluation: tame_core.splits, still importable from tame_core.training
    from tame_core import splits
    from tame_core.evaluation import run

    assert split_files is splits.split_files and run.split_files is splits.split_files


def test_split_of_the_shared_samples_is_800_and_200(shared_samples):
    from tame_core.images import find_images

    files = find_images(shared_samples)
    train, heldout = split_files(files, "train"), split_files(files, "heldout")
    assert (len(train), len(heldout)) == (800, 200)
    assert not set(train) & set(heldout)


@pytest.mark.parametrize("augment", ["none", "standard", "heavy"])
def test_transforms_give_model_inputs_and_repeat_with_the_seed(tmp_path, augment):
    path = write_images(tmp_path, 1, size=(60, 90))[0]
    data = ImageFiles([path], build_transform(PREPROCESS, augment))
    first, again, other = data[(0, 7)], data[(0, 7)], data[(0, 8)]
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(first, again)
    if augment == "none":
        from tame_core.images import image_to_tensor, load_image

        assert torch.equal(first, PREPROCESS.to_input(image_to_tensor(load_image(path)), "crop"))
    else:
        assert not torch.equal(first, other)
    with pytest.raises(TrainingError, match="unknown augmentation"):
        build_transform(PREPROCESS, "extreme")


def test_epoch_sampler_is_seeded_resumable_and_shards_ranks():
    data = list(range(10))
    sampler = EpochSampler(data, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert sorted(i for i, _ in epoch0) == data
    sampler.set_epoch(0)
    assert list(sampler) == epoch0  # the same order and augmentation seeds every time
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    sampler.set_epoch(0, skip=4)
    assert list(sampler) == epoch0[4:] and len(sampler) == 6
    ranks = [EpochSampler(data, seed=3, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    shards = [list(r) for r in ranks]
    assert sorted(i for shard in shards for i, _ in shard) == data
