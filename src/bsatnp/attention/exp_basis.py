"""Fast exact evaluation of exponential basis biases ``Σ_f a[h,f]·exp(−b[h,f]·r)``.

The ``rbf`` (``r = d²``) and ``exponential`` (``r = d``) families evaluate one exponential
per *distinct* rate ``b`` instead of one per (head, basis function). With the reference's
constant init the basis functions of a head keep identical rates through training, so a
4-head, 5-basis bias costs one exponential per pair and head (one in all before the first
update); the ``spread`` init starts with rates shared by all heads. Rates are grouped
either across all heads or head by head, whichever needs fewer passes over the tile. The
backward reduces over pairs with BLAS and is exact for every ``a[h,f]`` and ``b[h,f]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from bsatnp.attention.numerics import exp_


class _RateGroup(NamedTuple):
    heads: slice  # heads that share these rates
    rates: Tensor  # [U] distinct rates
    inverse: Tensor  # [Hs, F] index of each b[h, f] in rates
    amp: Tensor  # [Hs, U] summed amplitudes per head and rate


def _group(a: Tensor, b: Tensor, heads: slice) -> _RateGroup:
    rates, inverse = torch.unique(b[heads], return_inverse=True)
    amp = a.new_zeros(inverse.shape[0], rates.numel())
    amp.scatter_add_(1, inverse, a[heads])
    return _RateGroup(heads, rates, inverse, amp)


def rate_groups(a: Tensor, b: Tensor, per_head: bool | None = None) -> list[_RateGroup]:
    """The distinct rates of ``b [H, F]`` with their summed amplitudes ``a``.

    Grouped across all heads, or head by head (``per_head``; ``None``: whichever costs
    fewer passes over a tile).
    """
    H = a.shape[0]
    groups = [_group(a, b, slice(h, h + 1)) for h in range(H)]
    if per_head:
        return groups
    shared = _group(a, b, slice(0, H))
    if per_head is not None:
        return [shared]
    cost_shared = shared.rates.numel() * (1 + H)  # one exp, then one pass over H heads
    cost_per_head = sum(2 * g.rates.numel() for g in groups)
    return [shared] if cost_shared <= cost_per_head else groups


def head_rates(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor] | None:
    """Each head's distinct rates and summed amplitudes ``([H, U], [H, U])``, or ``None``.

    ``None`` where a loop over them would compute more exponentials than grouping across
    heads.

    ``Σ_f a[h,f]·exp(−b[h,f]·r) = Σ_u amp[h,u]·exp(−rate[h,u]·r)``. One loop over these
    groups (what :func:`~bsatnp.attention.compiled.exp_family_profile` computes) takes
    ``H·U`` exponentials per pair; :func:`exp_basis` can take one per distinct rate of all
    heads. The loop is chosen only when no rate is shared between heads and every head has
    ``U`` distinct rates, as in a model trained from the constant init (one rate per head).
    Where heads share rates (a freshly initialised model: one rate for all), the eager path
    takes fewer exponentials and was the faster one when tried.
    """
    groups = rate_groups(a, b, per_head=True)
    if a.shape[0] * max(g.rates.numel() for g in groups) > torch.unique(b).numel():
        return None
    return torch.stack([g.rates for g in groups]), torch.cat([g.amp for g in groups])


class _ExpBasis(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, r: Tensor, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        B, H = r.shape[0], a.shape[0]
        flat_r = r.reshape(B, -1)
        out = r.new_empty(B, H, *r.shape[1:])
        flat_out = out.view(B, H, -1)
        groups = rate_groups(a, b)
        keep = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        bases = []
        for group in groups:
            U, Hs = group.rates.numel(), group.amp.shape[0]
            # [B, 2·U, N]: exp(−u·r) and exp(−u·r)·r per rate u, kept for the backward.
            basis = flat_r.new_empty(B, 2 * U if keep else 1, flat_r.shape[1])
            target = flat_out[:, group.heads]
            for u in range(U):
                e = basis[:, 2 * u] if keep else basis[:, 0]
                exp_(torch.mul(flat_r, -group.rates[u], out=e))
                if keep:
                    torch.mul(e, flat_r, out=basis[:, 2 * u + 1])
                amp = group.amp[:, u].view(1, Hs, 1)
                if u == 0:
                    torch.mul(e[:, None], amp, out=target)
                else:
                    target.addcmul_(e[:, None], amp)
            bases.append(basis)
        ctx.groups = groups
        if keep:
            ctx.save_for_backward(a, *bases)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor, Tensor]:  # type: ignore[override]
        a, *bases = ctx.saved_tensors
        B, H = grad_out.shape[:2]
        g = grad_out.reshape(B, H, -1)
        grad_a, grad_b = torch.empty_like(a), torch.empty_like(a)
        for group, basis in zip(ctx.groups, bases):
            Hs = group.amp.shape[0]
            # One pass over the gradient: Σ_pairs g·e and Σ_pairs g·e·r per head and rate.
            sums = torch.bmm(g[:, group.heads], basis.transpose(1, 2)).sum(0).view(Hs, -1, 2)
            grad_a[group.heads] = sums[..., 0].gather(1, group.inverse)
            grad_b[group.heads] = -a[group.heads] * sums[..., 1].gather(1, group.inverse)
        return None, grad_a, grad_b


def exp_basis(r: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``Σ_f a[h,f]·exp(−b[h,f]·r)`` for every head.

    Args:
        r: Distances (``d²`` for the RBF network, ``d`` for the exponential) ``[B, Lq, Lk]``;
            no gradient flows to them.
        a: Amplitudes ``[H, F]``.
        b: Rates ``[H, F]``.

    Returns:
        Bias ``[B, H, Lq, Lk]``.
    """
    return _ExpBasis.apply(r.detach(), a, b)
