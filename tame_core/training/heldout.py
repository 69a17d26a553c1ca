"""How well a head explains images it was not trained on: AD/IC on a list of files (the held-out split).

The images are shown to the classifier as it was evaluated (centre crop), each explained for its
top-1 class; the metrics themselves are :func:`tame_core.metrics.average_drop_increase`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..explainer import Explainer
from ..images import image_to_tensor, load_image
from ..metrics import average_drop_increase


def adic_scores(explainer: Explainer, files: Sequence[Path], batch_size: int = 16) -> dict[str, float]:
    """Mean AD/IC at 100%, 50% and 15% of pixels kept over ``files`` (in %), and the image count."""
    per_image: dict[str, list[torch.Tensor]] = {}
    preprocess = explainer.backbone.preprocess
    for start in range(0, len(files), batch_size):
        pictures = [image_to_tensor(load_image(path)) for path in files[start : start + batch_size]]
        inputs = preprocess.batch(pictures, "crop", explainer.device)
        explanation = explainer.explain_inputs(inputs)
        result = average_drop_increase(
            explainer.backbone, inputs, explanation.maps[:, 0], explanation.classes[:, 0], clean_logits=explanation.logits
        )
        for name, values in result.per_image().items():
            per_image.setdefault(name, []).append(values.float().cpu())
    scores = {name: round(float(torch.cat(values).mean()), 2) for name, values in per_image.items()}
    return {**scores, "images": len(files)}
