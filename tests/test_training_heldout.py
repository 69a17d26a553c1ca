"""Held-out AD/IC of a head over a list of files: the metrics module's numbers, batched and averaged."""

from __future__ import annotations

import pytest
from PIL import Image

from tame_core.metrics import average_drop_increase
from tame_core.training.heldout import adic_scores


def test_adic_scores_average_the_metric_over_batches(explainer, sample_images, tmp_path):
    paths = []
    for name, picture in sample_images.items():
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(picture).save(paths[-1])
    scores = adic_scores(explainer, paths, batch_size=3)  # batches of 3 and 1
    assert set(scores) == {"AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "images"} and scores["images"] == 4
    explanation = explainer.explain(list(sample_images.values()), geometry="crop")
    direct = average_drop_increase(
        explainer.backbone, explanation.inputs, explanation.maps[:, 0], explanation.classes[:, 0]
    ).summary()
    for name, value in direct.items():
        assert scores[name] == pytest.approx(value, abs=0.01), name
    assert all(0.0 <= scores[k] <= 100.0 for k in direct)
