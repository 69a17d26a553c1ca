"""Noisy linear imputation (ROAD, Rong et al. 2022) as a batched solve in torch, on the images' device.

Each removed pixel takes the weighted mean of its 8 neighbours (1/6 for the 4 direct ones, 1/12 for
the diagonals; neighbours outside the image are dropped), kept pixels being fixed boundary values:
one sparse linear system per image, shared by its channels. pytorch-grad-cam solves it per image on
the CPU with scipy. Here the system matrix is applied with shifted sums (no matrix is built) and all
images and channels are solved at once by conjugate gradients preconditioned with one multigrid
V-cycle (the matrix is symmetric positive definite whenever some pixel is kept): the removed pixels
are coarsened level by level (a coarse cell is unknown when every pixel under it is), with damped
Jacobi smoothing, bilinear transfer whose restriction is the prolongation's transpose, and an exact
dense solve on the coarsest grid, so the preconditioner is symmetric too. About ten iterations reach
the tolerance at any image size, where plain CG needs a number that grows with the size of the holes.
Then ``noise`` times standard normal noise is added to imputed pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import EvaluationError

#: The weight of each of the 8 neighbours, as the ROAD paper's imputer sets them.
DIRECT_WEIGHT, DIAGONAL_WEIGHT = 1 / 6, 1 / 12
#: Grids whose shorter side is at most this are the V-cycle's coarsest level (not coarsened further).
COARSEST_SIDE = 16
#: A coarsest level with at most this many pixels is solved exactly (a dense pseudo-inverse, one
#: matrix product per cycle); a larger one (a long thin image) is smoothed instead.
DENSE_PIXELS = 400
#: Damped Jacobi: the damping, and the sweeps on the coarsest level (before and after, symmetric).
JACOBI_DAMPING, COARSEST_SWEEPS = 0.8, 8
#: Convergence is checked every this many iterations: each check syncs an accelerator with the host,
#: while on a CPU it costs nothing and saves the iterations past convergence.
CHECK_EVERY = {"cpu": 1}
CHECK_EVERY_ACCELERATOR = 4
#: Images solved together on a CPU: one at a time keeps the solver's working set in cache (measured
#: 4x faster per image than 16 at a time at 224 px); accelerators take the whole batch at once.
CPU_CHUNK = 1


def noisy_linear_impute(
    images: torch.Tensor,
    keep: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-4,
    max_iterations: int = 2000,
    chunk: int | None = None,
) -> torch.Tensor:
    """Fill the pixels of ``images`` (B, C, H, W) where ``keep`` (B, H, W) is False from their neighbours.

    ``tolerance`` bounds each system's residual relative to its right-hand side: 1e-4 leaves pixel
    errors of at most about 3e-3 (under one 8-bit grey level, and well under the 0.01 noise ROAD
    adds); 1e-6 matches pytorch-grad-cam's ``NoisyLinearImputer(noise=0)`` to a few 1e-5. ``chunk``:
    images solved together (default: 1 on a CPU, all on an accelerator).
    """
    if images.ndim != 4 or tuple(keep.shape) != (images.shape[0], *images.shape[-2:]):
        expected = (images.shape[0], *images.shape[-2:]) if images.ndim == 4 else "(B, H, W)"
        raise EvaluationError(f"keep mask must be {expected} for images {tuple(images.shape)}, got {tuple(keep.shape)}")
    if bool((~keep).flatten(1).all(dim=1).any()):
        raise EvaluationError("cannot impute an image whose every pixel is removed (keep at least one)")
    values = images.float()
    kept = keep[:, None].to(values.dtype)
    step = chunk or (CPU_CHUNK if images.device.type == "cpu" else images.shape[0])
    filled = torch.cat([
        _solve(values[i : i + step] * kept[i : i + step], kept[i : i + step], tolerance, max_iterations)
        for i in range(0, images.shape[0], step)
    ])
    if noise:
        random = torch.randn(filled.shape, generator=generator, device=filled.device, dtype=filled.dtype)
        filled = filled + noise * random * (1 - kept)
    return filled.to(images.dtype)


def neighbour_sum(z: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's in-image neighbours: the 3x3 stencil [1 2 1; 2 0 2; 1 2 1] / 12."""
    padded = F.pad(z, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]
    block = rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]
    return (block - 4 * z) * DIAGONAL_WEIGHT


def restrict_halving(r: torch.Tensor) -> torch.Tensor:
    """The transpose of 2x bilinear upsampling (``align_corners=False``) for even sides, by strided sums:
    coarse cell i gathers 3/4 of fine pixels 2i and 2i+1 and 1/4 of 2i-1 and 2i+2 (edges repeated).
    Same result as ``aten.upsample_bilinear2d_backward``, 4x faster at 224 px on a CPU."""
    padded = F.pad(r, (1, 1, 1, 1), mode="replicate")
    near, far = padded[..., 1:-1:2, :] + padded[..., 2::2, :], padded[..., 0:-2:2, :] + padded[..., 3::2, :]
    rows = 0.75 * near + 0.25 * far
    near, far = rows[..., 1:-1:2] + rows[..., 2::2], rows[..., 0:-2:2] + rows[..., 3::2]
    return 0.75 * near + 0.25 * far


class _Level:
    """One grid of the V-cycle: its removed pixels, the stencil's row sums, and the next coarser grid."""

    def __init__(self, missing: torch.Tensor) -> None:
        self.missing = missing
        self.size = tuple(missing.shape[-2:])
        self.diagonal = neighbour_sum(torch.ones_like(missing[:1, :1]))  # the row sums: fewer at the border
        self.smoother = missing * JACOBI_DAMPING / self.diagonal
        # A coarse cell is unknown only when every pixel under it is: scattered small holes then stay on
        # the fine grids, where smoothing alone solves them (an "any" rule needed 2-4x the iterations).
        coarse = 1 - F.max_pool2d(1 - missing, 2, ceil_mode=True) if min(self.size) > COARSEST_SIDE else None
        self.coarser = _Level(coarse) if coarse is not None else None
        pixels = self.size[0] * self.size[1]
        self.inverse = self._dense_inverse() if self.coarser is None and pixels <= DENSE_PIXELS else None

    def _dense_inverse(self) -> torch.Tensor:
        """(B, n, n): the pseudo-inverse of the system on this grid (singular only when no pixel is kept)."""
        pixels = self.size[0] * self.size[1]
        basis = torch.eye(pixels, dtype=self.missing.dtype, device=self.missing.device).reshape(pixels, 1, *self.size)
        stencil = (self.diagonal * basis - neighbour_sum(basis)).reshape(pixels, pixels)
        missing = self.missing.reshape(-1, 1, pixels)  # one system per image
        system = missing.transpose(1, 2) * stencil * missing + torch.diag_embed(1 - missing[:, 0])
        return missing.transpose(1, 2) * torch.linalg.pinv(system, hermitian=True) * missing

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """The system matrix on the removed pixels (``z`` is zero elsewhere)."""
        return self.missing * (self.diagonal * z - neighbour_sum(z))

    def restrict(self, r: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`prolong`: residuals summed onto the coarse grid with bilinear weights."""
        coarse = self.coarser
        if self.size[0] % 2 == 0 and self.size[1] % 2 == 0:
            return coarse.missing * restrict_halving(r)
        full = [r.shape[0], r.shape[1], *coarse.size]
        return coarse.missing * torch.ops.aten.upsample_bilinear2d_backward(r, list(self.size), full, False, None, None)

    def prolong(self, e: torch.Tensor) -> torch.Tensor:
        return self.missing * F.interpolate(e, size=self.size, mode="bilinear", align_corners=False)

    def vcycle(self, r: torch.Tensor) -> torch.Tensor:
        """An approximate solve of ``apply(x) = r``: symmetric, so it can precondition CG."""
        if self.inverse is not None:
            return torch.matmul(r.flatten(2), self.inverse).reshape(r.shape)
        x = self.smoother * r
        if self.coarser is None:
            for _ in range(2 * COARSEST_SWEEPS - 1):
                x = x + self.smoother * (r - self.apply(x))
            return x
        x = x + self.prolong(self.coarser.vcycle(self.restrict(r - self.apply(x))))
        return x + self.smoother * (r - self.apply(x))


def _solve(known: torch.Tensor, kept: torch.Tensor, tolerance: float, max_iterations: int) -> torch.Tensor:
    """Kept values plus the imputed ones."""
    level = _Level(1 - kept)
    rhs = level.missing * neighbour_sum(known)
    return known + _conjugate_gradients(level.apply, rhs, level.vcycle, torch.zeros_like(rhs), tolerance, max_iterations)


def _conjugate_gradients(operator, rhs, preconditioner, x, tolerance, max_iterations) -> torch.Tensor:
    """Preconditioned CG on many independent systems at once (one per leading (B, C) index)."""

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    check_every = CHECK_EVERY.get(rhs.device.type, CHECK_EVERY_ACCELERATOR)
    r = rhs - operator(x)
    z = preconditioner(r)
    p = z
    rz = dot(r, z)
    limit = tolerance * dot(rhs, rhs).sqrt()
    for iteration in range(max_iterations):
        if iteration % check_every == 0 and bool((dot(r, r).sqrt() <= limit).all()):
            break
        q = operator(p)
        alpha = rz / dot(p, q).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * q
        z = preconditioner(r)
        rz_next = dot(r, z)
        p = z + rz_next / rz.clamp_min(1e-30) * p
        rz = rz_next
    return x
