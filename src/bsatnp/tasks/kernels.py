"""Stationary covariance kernels, batched over tasks.

Every kernel maps inputs ``x1 [B, N, D]`` and ``x2 [B, M, D]`` with per-task variance
``var [B]`` and lengthscale ``lengthscale [B]`` (a Python float or a 0-d tensor broadcasts
to all tasks) to a covariance matrix ``[B, N, M]`` in the dtype of ``x1``. Distances are
computed from coordinate differences, never expanded as ``|a|² + |b|² − 2a·b``, which
loses precision far from the origin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from bsatnp.geometry import great_circle_degrees as _gc_degrees
from bsatnp.geometry import pairwise_components

Kernel = Callable[..., Tensor]
"""``kernel(x1 [B,N,D], x2 [B,M,D], var [B], lengthscale [B], **extra) -> [B,N,M]``."""


def distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Pairwise Euclidean distances computed from coordinate differences.

    Uses ``torch.cdist`` in its direct mode, which forms ``x1[:, n] − x2[:, m]`` for every
    pair (no ``|a|² + |b|² − 2a·b`` matrix product), so it stays exact far from the origin.

    Args:
        x1: Points ``[B, N, D]``.
        x2: Points ``[B, M, D]``.

    Returns:
        ``[B, N, M]`` with entry ``‖x1[b, n] − x2[b, m]‖``.
    """
    return torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist")


def _per_task(value: Tensor | float, like: Tensor) -> Tensor:
    """Reshape a per-task parameter ``[B]`` (or scalar) to ``[B, 1, 1]`` like ``like``."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def _scaled_distance(x1: Tensor, x2: Tensor, lengthscale: Tensor | float) -> Tensor:
    """Distances ``d / ℓ`` ``[B, N, M]``, scaling the inputs rather than the matrix."""
    ls = _per_task(lengthscale, x1)
    return distance(x1 / ls, x2 / ls)


def rbf(x1: Tensor, x2: Tensor, var: Tensor | float, lengthscale: Tensor | float) -> Tensor:
    """Squared-exponential kernel ``var · exp(−d² / (2ℓ²))``; shapes as in the module doc."""
    r = _scaled_distance(x1, x2, lengthscale)
    return _per_task(var, x1) * torch.exp(-0.5 * r.square())


def matern12(x1: Tensor, x2: Tensor, var: Tensor | float, lengthscale: Tensor | float) -> Tensor:
    """Matérn ν=1/2 (exponential) kernel ``var · exp(−d/ℓ)``; shapes as in the module doc."""
    return _per_task(var, x1) * torch.exp(-_scaled_distance(x1, x2, lengthscale))


def matern32(x1: Tensor, x2: Tensor, var: Tensor | float, lengthscale: Tensor | float) -> Tensor:
    """Matérn ν=3/2 kernel ``var · (1 + √3 d/ℓ) · exp(−√3 d/ℓ)``; shapes as in the module doc."""
    r = math.sqrt(3.0) * _scaled_distance(x1, x2, lengthscale)
    return _per_task(var, x1) * (1.0 + r) * torch.exp(-r)


def matern52(x1: Tensor, x2: Tensor, var: Tensor | float, lengthscale: Tensor | float) -> Tensor:
    """Matérn ν=5/2 kernel ``var · (1 + √5 d/ℓ + 5d²/(3ℓ²)) · exp(−√5 d/ℓ)``.

    Shapes as in the module doc.
    """
    r = math.sqrt(5.0) * _scaled_distance(x1, x2, lengthscale)
    return _per_task(var, x1) * (1.0 + r + r.square() / 3.0) * torch.exp(-r)


def periodic(
    x1: Tensor,
    x2: Tensor,
    var: Tensor | float,
    lengthscale: Tensor | float,
    period: Tensor | float = 1.0,
) -> Tensor:
    """Periodic kernel ``var · exp(−2 sin²(π d / p) / ℓ²)`` on the Euclidean distance ``d``.

    Positive semi-definite for 1-D inputs; on the Euclidean distance in several
    dimensions it need not be.

    Args:
        x1: Points ``[B, N, D]``.
        x2: Points ``[B, M, D]``.
        var: Variance ``[B]`` or scalar.
        lengthscale: Lengthscale ``[B]`` or scalar.
        period: Period ``p``, ``[B]`` or scalar.

    Returns:
        Covariance ``[B, N, M]``.
    """
    d = distance(x1, x2)
    s = torch.sin(math.pi * d / _per_task(period, x1))
    return _per_task(var, x1) * torch.exp(-2.0 * s.square() / _per_task(lengthscale, x1).square())


def great_circle_degrees(x1: Tensor, x2: Tensor) -> Tensor:
    """Pairwise great-circle distances in degrees between (longitude, latitude) in degrees.

    Args:
        x1: Points ``[B, N, 2]``.
        x2: Points ``[B, M, 2]``.

    Returns:
        ``[B, N, M]`` central angles in degrees (haversine, well conditioned when small).
    """
    return _gc_degrees(*pairwise_components(x1, x2))


def matern12_great_circle(x1: Tensor, x2: Tensor, var: Tensor | float,
                          lengthscale: Tensor | float) -> Tensor:
    """Exponential kernel on the sphere ``var · exp(−d_gc/ℓ)``, ``d_gc`` in degrees.

    Inputs are (longitude, latitude) in degrees ``[B, N, 2]``; positive definite on the
    sphere (the exponential of the geodesic distance is); shapes as in the module doc.
    """
    d = great_circle_degrees(x1, x2)
    return _per_task(var, x1) * torch.exp(-d / _per_task(lengthscale, x1))


KernelName = Literal["rbf", "matern12", "matern32", "matern52", "periodic",
                     "matern12_great_circle"]
"""Names of the kernels (the keys of :data:`KERNELS`)."""

KERNELS: dict[str, Kernel] = {
    "rbf": rbf,
    "matern12": matern12,
    "matern32": matern32,
    "matern52": matern52,
    "periodic": periodic,
    "matern12_great_circle": matern12_great_circle,
}
"""Kernel name → kernel function."""


def get_kernel(kernel: str | Kernel) -> Kernel:
    """Resolve a kernel given by name (a key of :data:`KERNELS`) or as a function.

    Raises:
        ValueError: If ``kernel`` is an unknown name.
    """
    if callable(kernel):
        return kernel
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}")
    return KERNELS[kernel]
