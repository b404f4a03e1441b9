"""Dense biased attention: the bias is materialised, then PyTorch's SDPA runs.

Memory is O(B·H·Lq·Lk): the simplest backend and the fastest for small problems.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

from bsatnp.attention.biases import AttentionBias
from bsatnp.attention.numerics import zero_keyless_rows


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor],
    coords_k: Mapping[str, Tensor],
    key_mask: Tensor | None,
    scale: float,
) -> Tensor:
    """Softmax attention of ``q`` over the valid keys with an additive distance bias.

    Args:
        q: Queries ``[B, H, Lq, D]``.
        k: Keys ``[B, H, Lk, D]``.
        v: Values ``[B, H, Lk, Dv]``.
        bias: Bias module, or ``None`` for plain attention.
        coords_q: Per-role query coordinates ``{role: [B, Lq, Dr]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, Dr]}``.
        key_mask: Valid keys ``[B, Lk]`` (bool) or ``None`` (all valid).
        scale: Multiplier of ``q·k``.

    Returns:
        ``[B, H, Lq, Dv]``; rows without any valid key are zero.
    """
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    scores_bias = (
        bias(coords_q, coords_k)
        if bias is not None
        else q.new_zeros(B, 1, Lq, Lk)
    )
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=scores_bias, scale=scale)
    has_key = key_mask.any(dim=1)  # [B]
    # Tasks without a valid key attend uniformly (finite), then their output is zeroed.
    keep = (key_mask | ~has_key[:, None])[:, None, None, :]
    attn_mask = scores_bias.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return zero_keyless_rows(out, key_mask)
