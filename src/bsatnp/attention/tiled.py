"""Biased *scan* attention: tiles of queries × keys with an online softmax.

The bias is computed for one tile at a time and never materialised in full, so memory is
O(tile) instead of O(Lq·Lk). The backward pass recomputes each tile (as FlashAttention
does) and obtains the gradients of the bias parameters tile by tile, so training memory is
bounded too.

Forward, for one query tile with running row max ``m``, row sum ``ℓ`` and output ``O``, and
for each key tile with scores ``S = scale·q·kᵀ + bias`` (masked keys at −∞)::

    m' = max(m, rowmax S);  P = exp(S − m');  ℓ' = e^{m−m'}·ℓ + rowsum P;  O' = e^{m−m'}·O + P·V

and finally ``O/ℓ``. Rows without any valid key return zeros (and zero gradients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bsatnp.attention.biases import AttentionBias, slice_coords
from bsatnp.attention.numerics import exp_

DEFAULT_TILE_K = 1024
DEFAULT_TILE_ELEMENTS = 1 << 22
"""Default size of one score tile, ``B·H·tile_q·tile_k`` elements (16 MiB in float32)."""


def tile_sizes(
    B: int, H: int, Lq: int, Lk: int, tile_q: int | None, tile_k: int | None
) -> tuple[int, int]:
    """Tile sizes: ``tile_k`` keys (default 1024) and as many queries as fit the budget."""
    tk = max(1, min(Lk, tile_k or DEFAULT_TILE_K))
    tq = tile_q or max(16, DEFAULT_TILE_ELEMENTS // (B * H * tk))
    return max(1, min(Lq, tq)), tk


def _scores(q_t: Tensor, k_t: Tensor, bias_t: Tensor | None, mask_t: Tensor | None) -> Tensor:
    """Scores ``q_t·k_tᵀ + bias_t + mask_t`` of one tile ``[B, H, tq, tk]``.

    Args:
        q_t: Scaled queries ``[B, H, tq, D]``.
        k_t: Keys ``[B, H, tk, D]``.
        bias_t: Bias ``[B, H, tq, tk]`` or ``None``; not modified.
        mask_t: Additive key mask ``[B, 1, 1, tk]`` (0 or −inf) or ``None``.
    """
    B, H, tq, D = q_t.shape
    tk = k_t.shape[2]
    qf, kf = q_t.reshape(B * H, tq, D), k_t.reshape(B * H, tk, D).transpose(1, 2)
    if bias_t is None:
        scores = torch.bmm(qf, kf).view(B, H, tq, tk)
        return scores if mask_t is None else scores.add_(mask_t)
    base = bias_t if mask_t is None else bias_t + mask_t
    return torch.baddbmm(base.reshape(B * H, tq, tk), qf, kf).view(B, H, tq, tk)


def _key_tiles(
    key_mask: Tensor | None, Lk: int, tk: int, dtype: torch.dtype
) -> list[tuple[int, Tensor | None]]:
    """Start of every key tile and its additive mask ``[B, 1, 1, tk]`` (0 valid, −inf
    padded), ``None`` where all keys of the tile are valid."""
    tiles: list[tuple[int, Tensor | None]] = []
    for j in range(0, Lk, tk):
        mask_t = None if key_mask is None else key_mask[:, j : j + tk]
        if mask_t is None or bool(mask_t.all()):
            tiles.append((j, None))
            continue
        additive = torch.zeros(mask_t.shape, dtype=dtype, device=mask_t.device)
        tiles.append((j, additive.masked_fill_(~mask_t, float("-inf"))[:, None, None, :]))
    return tiles


def tiled_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor],
    coords_k: Mapping[str, Tensor],
    key_mask: Tensor | None,
    scale: float,
    tile_q: int | None = None,
    tile_k: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Scan forward without autograd.

    Shapes as in :func:`bsatnp.attention.dense.dense_attention`.

    Returns:
        ``(out [B, H, Lq, Dv], m [B, H, Lq], ell [B, H, Lq])``: the output, the row max of
        the scores and the row sum of ``exp(scores − m)``. Rows without a valid key get
        ``m = +inf`` and ``ell = 1``, so that recomputed probabilities are zero there.
        Keeping ``m`` and ``ell`` apart (not ``m + log ell``) keeps ``exp(s − m)`` exact to
        float32 round-off even when scores are large.
    """
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    tq, tk = tile_sizes(B, H, Lq, Lk, tile_q, tile_k)
    key_tiles = _key_tiles(key_mask, Lk, tk, q.dtype)
    q = q * scale
    out = q.new_empty(B, H, Lq, v.shape[-1])
    m_all, ell_all = q.new_empty(B, H, Lq), q.new_empty(B, H, Lq)
    for i in range(0, Lq, tq):
        q_t = q[:, :, i : i + tq]
        cq = slice_coords(coords_q, i, i + tq)
        m = q_t.new_full(q_t.shape[:3], float("-inf"))
        ell = q_t.new_zeros(q_t.shape[:3])
        acc = q_t.new_zeros(*q_t.shape[:3], v.shape[-1])
        for j, mask_t in key_tiles:
            bias_t = None if bias is None else bias(cq, slice_coords(coords_k, j, j + tk))
            scores = _scores(q_t, k[:, :, j : j + tk], bias_t, mask_t)
            m_new = torch.maximum(m, scores.amax(dim=-1))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = exp_(scores.sub_(m_safe[..., None]))
            alpha = torch.exp(m - m_safe)
            ell = ell * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + torch.matmul(p, v[:, :, j : j + tk])
            m = m_new
        valid = ell > 0
        out[:, :, i : i + tq] = torch.where(
            valid[..., None], acc / ell.clamp_min(1e-38)[..., None], torch.zeros_like(acc)
        )
        m_all[:, :, i : i + tq] = torch.where(valid, m, torch.full_like(m, float("inf")))
        ell_all[:, :, i : i + tq] = torch.where(valid, ell, torch.ones_like(ell))
    return out, m_all, ell_all


class _TiledBiasedAttention(torch.autograd.Function):
    """Scan attention with a tile-recomputing backward (gradients for bias params too)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_mask: Tensor | None,
        bias: AttentionBias | None,
        coords_q: Mapping[str, Tensor],
        coords_k: Mapping[str, Tensor],
        scale: float,
        tile_q: int | None,
        tile_k: int | None,
        *params: Tensor,
    ) -> Tensor:
        out, m, ell = tiled_forward(
            q, k, v, bias, coords_q, coords_k, key_mask, scale, tile_q, tile_k
        )
        ctx.save_for_backward(q, k, v, out, m, ell)
        ctx.key_mask, ctx.bias, ctx.coords_q, ctx.coords_k = key_mask, bias, coords_q, coords_k
        ctx.scale, ctx.tile_q, ctx.tile_k, ctx.params = scale, tile_q, tile_k, params
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, m, ell = ctx.saved_tensors
        bias: AttentionBias | None = ctx.bias
        params: Sequence[Tensor] = ctx.params
        want = [ctx.needs_input_grad[10 + n] for n in range(len(params))]
        wanted = [p for p, w in zip(params, want) if w]
        # Accumulated over all tiles in float64: the sums are long and cancel.
        grad_wanted = [torch.zeros_like(p, dtype=torch.float64) for p in wanted]
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        tq, tk = tile_sizes(B, H, Lq, Lk, ctx.tile_q, ctx.tile_k)
        key_tiles = _key_tiles(ctx.key_mask, Lk, tk, q.dtype)
        # With P = exp(S − m)/ℓ: fold 1/ℓ into dO so that only exp(S − m) is formed.
        dout_l = dout / ell[..., None]
        delta = (dout * out).sum(-1, keepdim=True) / ell[..., None]  # [B, H, Lq, 1]
        q_scaled = q * ctx.scale
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for i in range(0, Lq, tq):
            q_t, do_t = q_scaled[:, :, i : i + tq], dout_l[:, :, i : i + tq]
            m_t, delta_t = m[:, :, i : i + tq, None], delta[:, :, i : i + tq]
            cq = slice_coords(ctx.coords_q, i, i + tq)
            for j, mask_t in key_tiles:
                k_j, v_j = k[:, :, j : j + tk], v[:, :, j : j + tk]
                bias_t = None
                if bias is not None:
                    with torch.enable_grad():
                        bias_t = bias(cq, slice_coords(ctx.coords_k, j, j + tk))
                scores = _scores(q_t, k_j, None if bias_t is None else bias_t.detach(), mask_t)
                e = exp_(scores.sub_(m_t))
                dv[:, :, j : j + tk] += torch.matmul(e.transpose(-1, -2), do_t)
                ds = e.mul_(torch.matmul(do_t, v_j.transpose(-1, -2)).sub_(delta_t))
                dq[:, :, i : i + tq] += torch.matmul(ds, k_j)
                dk[:, :, j : j + tk] += torch.matmul(ds.transpose(-1, -2), q_t)
                if bias_t is not None and wanted:
                    for acc, g in zip(grad_wanted, torch.autograd.grad(bias_t, wanted, ds)):
                        acc += g
        dq.mul_(ctx.scale)
        it = iter(grad_wanted)
        grads = [next(it).to(p.dtype) if w else None for p, w in zip(params, want)]
        return (dq, dk, dv, None, None, None, None, None, None, None, *grads)


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor],
    coords_k: Mapping[str, Tensor],
    key_mask: Tensor | None,
    scale: float,
    tile_q: int | None = None,
    tile_k: int | None = None,
) -> Tensor:
    """Biased scan attention with bounded memory in forward and backward.

    Shapes and semantics as :func:`bsatnp.attention.dense.dense_attention`.

    Args:
        q: Queries ``[B, H, Lq, D]``.
        k: Keys ``[B, H, Lk, D]``.
        v: Values ``[B, H, Lk, Dv]``.
        bias: Bias module, or ``None``.
        coords_q: Per-role query coordinates ``{role: [B, Lq, Dr]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, Dr]}``.
        key_mask: Valid keys ``[B, Lk]`` (bool) or ``None``.
        scale: Multiplier of ``q·k``.
        tile_q: Queries per tile (default: fill a 4M-element score tile).
        tile_k: Keys per tile (default 1024).

    Returns:
        ``[B, H, Lq, Dv]``.
    """
    params = tuple(bias.parameters()) if bias is not None else ()
    if not torch.is_grad_enabled() or not (
        q.requires_grad or k.requires_grad or v.requires_grad or any(p.requires_grad for p in params)
    ):
        with torch.no_grad():
            return tiled_forward(
                q, k, v, bias, coords_q, coords_k, key_mask, scale, tile_q, tile_k
            )[0]
    coords_q = {r: c.detach() for r, c in coords_q.items()}
    coords_k = {r: c.detach() for r, c in coords_k.items()}
    return _TiledBiasedAttention.apply(
        q, k, v, key_mask, bias, coords_q, coords_k, scale, tile_q, tile_k, *params
    )
