"""Noisy linear imputation (ROAD, Rong et al. 2022) as a batched solve in torch, on the images' device.

Each removed pixel takes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct ones,
1/12 for the diagonals; neighbours outside the image are dropped), with kept pixels as fixed boundary
values: a sparse linear system per image. pytorch-grad-cam solves it per image on the CPU with scipy.
Here the system matrix is applied as a 3x3 convolution and solved by conjugate gradients for all
images and channels at once (the matrix is symmetric positive definite whenever some pixel is kept),
warm-started from a coarse-to-fine fill so few iterations are needed. Then ``noise`` times standard
normal noise is added to the imputed pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import EvaluationError

#: Neighbour weights of the ROAD paper's imputer (centre unused).
NEIGHBOUR_WEIGHTS = (
    (1 / 12, 1 / 6, 1 / 12),
    (1 / 6, 0.0, 1 / 6),
    (1 / 12, 1 / 6, 1 / 12),
)


def noisy_linear_impute(
    images: torch.Tensor,
    keep: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-6,
    max_iterations: int = 2000,
) -> torch.Tensor:
    """Fill the pixels of ``images`` (B, C, H, W) where ``keep`` (B, H, W) is False from their neighbours.

    ``tolerance`` bounds each system's residual relative to its right-hand side. With ``noise=0`` the
    result matches pytorch-grad-cam's ``NoisyLinearImputer(noise=0)`` to about 1e-5.
    """
    if images.ndim != 4 or keep.shape != (images.shape[0], *images.shape[-2:]):
        raise EvaluationError(f"keep must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(keep.shape)}")
    if bool((~keep).flatten(1).all(dim=1).any()):
        raise EvaluationError("cannot impute an image with every pixel removed (keep at least one)")
    work = torch.float64 if images.device.type == "cpu" else torch.float32
    x = images.to(work)
    missing = (~keep)[:, None].to(work)  # (B, 1, H, W)
    kernel = torch.tensor(NEIGHBOUR_WEIGHTS, dtype=work, device=images.device)[None, None]

    def neighbours(z: torch.Tensor) -> torch.Tensor:
        """Weighted sum of each pixel's in-image neighbours, per channel."""
        return F.conv2d(z.flatten(0, 1)[:, None], kernel, padding=1).view_as(z)

    weight_sum = F.conv2d(torch.ones_like(x[:1, :1]), kernel, padding=1)  # (1, 1, H, W)
    known = x * (1 - missing)

    def operator(z: torch.Tensor) -> torch.Tensor:  # A z for z supported on the missing pixels
        return missing * (weight_sum * z - neighbours(z))

    rhs = missing * neighbours(known)
    start = _coarse_fill(known, 1 - missing) * missing
    solution = _conjugate_gradients(operator, rhs, missing / weight_sum, start, tolerance, max_iterations)
    filled = known + solution
    if noise:
        random = torch.randn(filled.shape, generator=generator, device=filled.device, dtype=filled.dtype)
        filled = filled + noise * random * missing
    return filled.to(images.dtype)


def _conjugate_gradients(operator, rhs, preconditioner, start, tolerance, max_iterations) -> torch.Tensor:
    """Preconditioned CG for many independent systems at once (one per leading (B, C) index)."""

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    x = start
    r = rhs - operator(x)
    z = preconditioner * r
    p = z
    rz = dot(r, z)
    limit = (tolerance * dot(rhs, rhs).sqrt()).clamp_min(1e-30)
    for _ in range(max_iterations):
        if bool((dot(r, r).sqrt() <= limit).all()):
            break
        q = operator(p)
        alpha = rz / dot(p, q).clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * q
        z = preconditioner * r
        rz_next = dot(r, z)
        p = z + (rz_next / rz.clamp_min(1e-300)) * p
        rz = rz_next
    return x


def _coarse_fill(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A smooth first guess for every pixel: known values averaged over ever coarser grids (pull-push)."""
    if known.shape[-1] <= 1 and known.shape[-2] <= 1:
        return values / known.clamp_min(1e-12)
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse = F.avg_pool2d(values, 2, ceil_mode=True) / weight.clamp_min(1e-12)
    coarse = _coarse_fill(coarse * (weight > 0), (weight > 0).to(weight.dtype))
    up = F.interpolate(coarse, size=values.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(known > 0, values / known.clamp_min(1e-12), up)
