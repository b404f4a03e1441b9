"""Numerical helpers shared by the attention kernels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

EXP_FLOOR = -87.0
"""Smallest exponent whose ``exp`` is a normal float32."""

EXP_FLOOR_VALUE = math.exp(EXP_FLOOR)
"""``e^−87 ≈ 1.6e−38``."""

EXP_CUTOFF = -80.0
"""Below this exponent :func:`exp_floored` returns 0."""


def exp_(x: Tensor) -> Tensor:
    """In-place ``exp`` that avoids the subnormal slow path and keeps ``exp(−inf) = 0``.

    On x86 CPUs ``exp`` is 10–50× slower whenever its result is subnormal (arguments below
    about −87): common in softmax and in RBF biases with large rates. Arguments are clamped
    at :data:`EXP_FLOOR` and ``e^−87`` is subtracted afterwards, so masked entries (−inf)
    and underflowing ones give exactly 0; any other result changes by at most 1.6e−38.
    """
    return x.clamp_min_(EXP_FLOOR).exp_().sub_(EXP_FLOOR_VALUE)


def exp_floored(x: Tensor) -> Tensor:
    """``exp(x)``, exactly 0 where ``x < EXP_CUTOFF``: no result is subnormal.

    ``exp`` never sees an argument below the cutoff either: x86's vectorised ``exp`` takes a
    slow path for arguments far below its range even where the result is a plain 0 (4–6 ns
    against 1.2 ns per element compiled, one thread), so the argument is clamped first.

    Out of place and differentiable (one fused loop under ``torch.compile``), for terms that
    are multiplied further: the results are at least ``e^−80 ≈ 1.8e−35``, so products with
    factors above ~1e−3 stay normal too. The dropped values (and their gradients) are below
    1.8e−35.
    """
    return torch.where(x < EXP_CUTOFF, 0.0, x.clamp_min(EXP_CUTOFF).exp())


def builds_graph(*tensors: Tensor, bias: nn.Module | None = None) -> bool:
    """Whether a call builds an autograd graph.

    True when gradients are enabled and an input or a bias parameter requires them.
    """
    params = () if bias is None else tuple(bias.parameters())
    return torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, *params))


def zero_keyless_rows(out: Tensor, key_mask: Tensor) -> Tensor:
    """``out [B, H, Lq, D]`` with the rows of tasks without a valid key set to zero.

    A task has no valid key when its row of ``key_mask [B, Lk]`` is all False.
    """
    has_key = key_mask.any(dim=1)[:, None, None, None]
    return torch.where(has_key, out, torch.zeros_like(out))
