"""One entry point for biased attention, with interchangeable backends.

Every backend computes the same function: softmax over the valid keys of
``scale·q·kᵀ + bias(coords_q, coords_k)``, times ``v``; rows without a valid key return
zeros. ``auto`` picks a backend by device and size (see :func:`choose_backend`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import torch
from torch import Tensor

from bsatnp.attention import fused_cpu
from bsatnp.attention.biases import AttentionBias
from bsatnp.attention.dense import dense_attention
from bsatnp.attention.flex import flex_attention_biased, flex_available
from bsatnp.attention.numerics import builds_graph
from bsatnp.attention.tiled import tiled_attention
from bsatnp.precision import full_precision

Backend = Literal["auto", "dense", "tiled", "flex"]
"""Attention backends (``auto``: see :func:`choose_backend`)."""
BACKENDS: tuple[str, ...] = get_args(Backend)


DENSE_MAX_ELEMENTS = 1 << 22
"""CPU inference below this many ``B·H·Lq·Lk`` score elements uses ``dense`` (unless the fused
kernels serve the problem: :func:`biased_attention`)."""
CUDA_DENSE_TRAIN_MAX_ELEMENTS = 1 << 27
"""CUDA training up to this many score elements (512 MiB per float32 copy) uses ``dense``."""


def choose_backend(q: Tensor, k: Tensor, needs_grad: bool = False) -> str:
    """The backend ``auto`` uses for queries ``q [B, H, Lq, D]`` and keys ``k [B, H, Lk, D]``.

    See :func:`backend_for`.
    """
    B, H, Lq, _ = q.shape
    return backend_for(q.device.type, B * H * Lq * k.shape[2], needs_grad)


def _fused_inference(q: Tensor, k: Tensor, bias: AttentionBias | None,
                     key_mask: Tensor | None) -> bool:
    """Whether ``tiled`` would run this CPU inference in the fused kernel.

    It does over unmasked keys with a bias the kernel computes, and there it is faster than
    ``dense`` at every size ``dense`` would take (``docs/benchmarks.md``).
    """
    if key_mask is not None and not bool(key_mask.all()):
        return False
    B, H, Lq, _ = q.shape
    return fused_cpu.fused_bias(bias, q, B * H * Lq * k.shape[2]) is not None


def backend_for(device_type: str, score_elements: int, needs_grad: bool) -> str:
    """The backend ``auto`` uses on ``device_type`` for ``B·H·Lq·Lk`` score elements.

    CUDA: ``flex`` (the fused kernel), except in training up to
    :data:`CUDA_DENSE_TRAIN_MAX_ELEMENTS`, where ``dense`` measured 1.5× faster (an H200,
    B=8, 512 context slots, 1024 test points: 45 ms vs 68 ms a step). CPU: ``dense`` for small
    inference problems (up to :data:`DENSE_MAX_ELEMENTS`, where it measured ~1.5×
    faster), otherwise ``tiled``: faster than ``dense`` at larger sizes and in training,
    and bounded in memory. Measurements: ``docs/benchmarks.md``.
    """
    if device_type == "cuda" and flex_available():
        if needs_grad and score_elements <= CUDA_DENSE_TRAIN_MAX_ELEMENTS:
            return "dense"
        return "flex"
    if not needs_grad and score_elements <= DENSE_MAX_ELEMENTS:
        return "dense"
    return "tiled"


def biased_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: AttentionBias | None = None,
    coords_q: Mapping[str, Tensor] | None = None,
    coords_k: Mapping[str, Tensor] | None = None,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    tile_q: int | None = None,
    tile_k: int | None = None,
) -> Tensor:
    """Attention with an additive, distance-based bias.

    Args:
        q: Queries ``[B, H, Lq, D]``.
        k: Keys ``[B, H, Lk, D]``.
        v: Values ``[B, H, Lk, Dv]``.
        bias: Bias module, or ``None`` for plain attention.
        coords_q: Per-role query coordinates ``{role: [B, Lq, Dr]}`` read by ``bias``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, Dr]}``.
        key_mask: Valid keys ``[B, Lk]`` (bool); ``None`` means all keys are valid.
        scale: Multiplier of ``q·k`` (default ``1/√D``).
        backend: ``auto``, ``dense``, ``tiled`` or ``flex``.
        tile_q: Queries per tile (``tiled`` only).
        tile_k: Keys per tile (``tiled`` only).

    Returns:
        ``[B, H, Lq, Dv]``; rows without any valid key are exactly zero.

    Under autocast on the CPU (bf16 training, :mod:`bsatnp.precision`) the attention
    computes in float32, like the bias and its distances: casting the score tiles to and
    from bf16 costs about what the bf16 matrix products save.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with full_precision("cpu"):
            return biased_attention(q.float(), k.float(), v.float(), bias, coords_q, coords_k,
                                    key_mask, scale, backend, tile_q, tile_k)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    coords_q = coords_q or {}
    coords_k = coords_k or {}
    if key_mask is not None and key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be bool, got {key_mask.dtype}")
    if backend == "auto":
        needs_grad = builds_graph(q, k, v, bias=bias)
        backend = choose_backend(q, k, needs_grad)
        if backend == "dense" and not needs_grad and _fused_inference(q, k, bias, key_mask):
            backend = "tiled"
    if backend == "dense":
        return dense_attention(q, k, v, bias, coords_q, coords_k, key_mask, scale)
    if backend == "tiled":
        return tiled_attention(q, k, v, bias, coords_q, coords_k, key_mask, scale, tile_q, tile_k)
    return flex_attention_biased(q, k, v, bias, coords_q, coords_k, key_mask, scale)
