"""Independent float64 reference implementations used by the tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def pairwise(family_distance: str, cq: Tensor, ck: Tensor) -> Tensor:
    """Plain pairwise distance ``[B, Lq, Lk]`` (not squared)."""
    if family_distance == "euclidean":
        return (cq[:, :, None] - ck[:, None]).square().sum(-1).sqrt()
    if family_distance == "abs":
        return (cq[:, :, None] - ck[:, None]).abs().sum(-1)

    # great circle via the spherical law of cosines on unit vectors (a different formula)
    def unit(c: Tensor) -> Tensor:
        lon, lat = c[..., 0] * math.pi / 180, c[..., 1] * math.pi / 180
        return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], -1)

    dot = (unit(cq)[:, :, None] * unit(ck)[:, None]).sum(-1).clamp(-1, 1)
    cross = torch.linalg.cross(
        unit(cq)[:, :, None].expand(-1, -1, ck.shape[1], -1),
        unit(ck)[:, None].expand(-1, cq.shape[1], -1, -1),
    ).norm(dim=-1)
    return torch.atan2(cross, dot)


def bias_reference(family: str, d: Tensor, a: Tensor, b: Tensor | None, c: Tensor | None) -> Tensor:
    """Bias ``[B, H, Lq, Lk]`` from distances ``d [B, Lq, Lk]`` and params ``[H, F]``."""
    d = d[:, None, :, :, None]
    A = a[None, :, None, None, :]
    if family == "scalar":
        return (A * d).sum(-1)
    Bp = b[None, :, None, None, :]
    if family == "rbf":
        return (A * torch.exp(-Bp * d**2)).sum(-1)
    if family == "exponential":
        return (A * torch.exp(-Bp * d)).sum(-1)
    Cp = c[None, :, None, None, :]
    return (A * torch.exp(-Bp * (d - Cp) ** 2)).sum(-1)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, key_mask: Tensor) -> Tensor:
    """Masked softmax attention; rows without valid keys are zero."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    has = key_mask.any(1)[:, None, None, None]
    scores = torch.where(has, scores, torch.zeros_like(scores))
    out = torch.softmax(scores, dim=-1) @ v
    return torch.where(has, out, torch.zeros_like(out))
