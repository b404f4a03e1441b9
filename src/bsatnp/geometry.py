"""Distances between coordinates, computed from differences.

Coordinates are passed as *components*: a sequence with one broadcastable tensor per
coordinate axis. The tiled backends pass ``coords_q[:, :, None, d]`` and
``coords_k[:, None, :, d]`` to get a pairwise ``[B, Lq, Lk]`` matrix without a
``[B, Lq, Lk, D]`` intermediate; the fused kernel passes scalars for one (query, key) pair.
Every function subtracts coordinates first and never expands ``|a|² + |b|² − 2a·b``: the
expanded form loses all precision far from the origin and would break translation
invariance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

Components = Sequence[Tensor]


def euclidean_sq(q: Components, k: Components) -> Tensor:
    """Squared Euclidean distance ``Σ_d (q_d − k_d)²``."""
    out = (q[0] - k[0]).square()
    for q_d, k_d in zip(q[1:], k[1:]):
        out = out + (q_d - k_d).square()
    return out


def abs_diff(q: Components, k: Components) -> Tensor:
    """Absolute difference ``Σ_d |q_d − k_d|`` (|Δt| for a single time axis)."""
    out = (q[0] - k[0]).abs()
    for q_d, k_d in zip(q[1:], k[1:]):
        out = out + (q_d - k_d).abs()
    return out


def great_circle(q: Components, k: Components) -> Tensor:
    """Central angle in radians between (longitude, latitude) points given in degrees.

    Uses the haversine formula, well conditioned for small distances. Multiply by the
    sphere's radius (6371 km for the Earth) for a length.
    """
    if len(q) != 2 or len(k) != 2:
        raise ValueError("great_circle needs (lon, lat) coordinates with 2 features")
    rad = math.pi / 180.0
    lat_q, lat_k = q[1] * rad, k[1] * rad
    h = torch.sin((lat_k - lat_q) / 2).square() + torch.cos(lat_q) * torch.cos(lat_k) * torch.sin(
        (k[0] - q[0]) * (rad / 2)
    ).square()
    return 2 * torch.asin(h.clamp(0, 1).sqrt())


def great_circle_degrees(q: Components, k: Components) -> Tensor:
    """:func:`great_circle` in degrees (the reference's unit for geodesic biases)."""
    return great_circle(q, k) * (180.0 / math.pi)


DistanceFn = Callable[[Components, Components], Tensor]

Distance = Literal["euclidean", "great_circle", "great_circle_degrees", "abs"]
"""Names of the distances (the keys of :data:`DISTANCES`)."""

DISTANCES: dict[str, tuple[DistanceFn, bool]] = {
    "euclidean": (euclidean_sq, True),
    "great_circle": (great_circle, False),
    "great_circle_degrees": (great_circle_degrees, False),
    "abs": (abs_diff, False),
}
"""Distance name → (function, whether the function returns the *squared* distance)."""


def euclidean_gap(gaps: Tensor) -> Tensor:
    """Euclidean length of per-axis gaps ``[..., D]`` → ``[...]``."""
    return gaps.square().sum(-1).sqrt()


def abs_gap(gaps: Tensor) -> Tensor:
    """Sum of per-axis gaps ``[..., D]`` → ``[...]`` (the :func:`abs_diff` distance)."""
    return gaps.sum(-1)


BOX_DISTANCES: dict[str, Callable[[Tensor], Tensor]] = {
    "euclidean": euclidean_gap,
    "abs": abs_gap,
}
"""Distance name → the (unsquared) distance across per-axis gaps between two boxes: a lower
bound of the distance between any point of one box and any point of the other. Distances
without an entry (great circles) have no box bound, and their tiles are never skipped."""


def pairwise_components(
    coords_q: Tensor, coords_k: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """Components of ``coords_q [B, Lq, D]`` and ``coords_k [B, Lk, D]`` for ``[B, Lq, Lk]``.

    Query components have shape ``[B, Lq, 1]`` and key components ``[B, 1, Lk]``.
    """
    return (
        [coords_q[:, :, None, d] for d in range(coords_q.shape[-1])],
        [coords_k[:, None, :, d] for d in range(coords_k.shape[-1])],
    )
