"""RISE (Petsiuk et al., BMVC 2018), batched on the device with a fixed seed.

Random binary grids of ``cells`` x ``cells`` (each cell on with probability ``p``) are upsampled
bilinearly to a little more than the image and cropped at a random shift, giving smooth masks; the
map is the average of the masks weighted by the class probability of each masked image,
divided by ``p``. The same seed gives the same masks, on any batch, so runs repeat exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import EvaluationError
from ..batching import check_batch_size, scores
from .base import Method, Model, register_method

#: Masks per image unless the caller says otherwise (the paper's count for ResNet-50).
DEFAULT_MASKS = 4000
#: Masks made and applied per round: bounds the memory of the masks, not of the forwards.
MASKS_PER_ROUND = 256


def rise_masks(count: int, size: tuple[int, int], cells: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` smooth random masks (count, H, W) in [0, 1]."""
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    grid = (torch.rand(count, 1, cells, cells, generator=generator, device=device) < p).float()
    up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear", align_corners=False)
    shift_y = torch.randint(0, cell_h, (count, 1, 1), generator=generator, device=device)
    shift_x = torch.randint(0, cell_w, (count, 1, 1), generator=generator, device=device)
    rows = shift_y + torch.arange(height, device=device)[None, :, None]
    cols = shift_x + torch.arange(width, device=device)[None, None, :]
    return up[torch.arange(count, device=device)[:, None, None], 0, rows, cols]


@register_method
class RiseMethod(Method):
    name = "rise"
    description = "RISE: class probability under random masks, averaged (N masks, seeded)"

    def expected_passes(self, explainer: Model, *, masks: int = DEFAULT_MASKS, **options: object) -> tuple[int, int]:
        return int(masks), 0

    def forward_batch(self, explainer: Model, *, batch_size: int | None = None, **options: object) -> int:
        return check_batch_size(batch_size, explainer.device)

    def compute(
        self,
        explainer: Model,
        images01: torch.Tensor,
        classes: torch.Tensor,
        *,
        masks: int = DEFAULT_MASKS,
        cells: int = 7,
        p: float = 0.5,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``masks``: how many (the paper: 4000 for ResNet-50); ``cells``: grid side; ``p``: keep probability;
        ``batch_size``: masked images per forward."""
        if masks < 1 or cells < 1 or not 0.0 < p <= 1.0:
            raise EvaluationError(f"RISE needs masks >= 1, cells >= 1 and 0 < p <= 1; got {masks}, {cells}, {p}")
        backbone = getattr(explainer, "backbone", explainer)
        device = images01.device
        batch, size = images01.shape[0], tuple(images01.shape[-2:])
        generator = torch.Generator(device=device).manual_seed(int(seed))
        forward_batch = check_batch_size(batch_size, device)
        saliency = torch.zeros(batch, *size, device=device)
        for start in range(0, masks, MASKS_PER_ROUND):
            count = min(MASKS_PER_ROUND, masks - start)
            round_masks = rise_masks(count, size, cells, p, generator, device)

            def build(a: int, b: int, masks: torch.Tensor = round_masks, count: int = count) -> torch.Tensor:
                rows = torch.arange(a, b, device=device)  # row = image * count + mask
                return images01[rows // count] * masks[rows % count, None]

            probs, _ = scores(backbone, batch * count, build, classes.repeat_interleave(count), forward_batch)
            saliency += torch.einsum("bn,nhw->bhw", probs.view(batch, count), round_masks)
        return saliency / (masks * p)

