"""Fused CPU kernels of biased attention (C++, built once): the whole attention in one pass.

BLAS would compute ``q·kᵀ`` into a score tile, write it to memory, and read it back for the
bias, the softmax and ``P·v`` (and, in the backward, for ``dP``, ``dS``, ``dq``, ``dk`` and
``dv``), in small per-task products far from its peak. The kernels of ``fused_cpu.cpp`` do
it all for a block of 8 query rows at a time, the block's scores in L1/L2 and the head's
keys and values in L2, each key or value row loaded once per block:

* :func:`attention`: inference, ``softmax(q·kᵀ + bias)·v`` over every key (no mask), the
  keys :data:`KEY_CHUNK` at a time with an online softmax, so memory stays O(chunk) per
  thread at any number of keys;
* :func:`training_attention`: the training forward (probabilities kept for the backward)
  and backward, each task over its own valid keys: padded context slots cost nothing and no
  per-task split is needed.

They serve a bias of one ``rbf`` or ``exponential`` term on the Euclidean distance (the 2D-GP
models and their kin); :func:`fused_bias` says whether one does. The extension is compiled with
the machine's C++ compiler on first use (``torch.utils.cpp_extension``; about a minute, then
cached on disk) and only where the attention runtime allows compiling (``compile="never"``
keeps the eager kernels). Training builds it at once; inference uses a build already on
disk at once, and otherwise builds only once this process has computed
:data:`INFERENCE_WARMUP` scores eagerly (or under ``compile="always"``), so one small
prediction never waits for a build. Where building fails (no compiler, no ``ninja``) one
warning is given and the eager kernels serve: the results agree to float32 round-off either
way.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.profiler import record_function

from bsatnp.attention.biases import AttentionBias
from bsatnp.attention.exp_basis import rate_groups
from bsatnp.attention.runtime import current_runtime

SOURCE = Path(__file__).with_name("fused_cpu.cpp")
NAME = "bsatnp_fused_cpu"
INFERENCE_WARMUP = 10**10
"""Scores inference computes eagerly in a process before it builds the kernels (as
:data:`~bsatnp.attention.compiled.EXP_FAMILY_WARMUP`)."""
KEY_CHUNK = 1024
"""Keys per chunk of the inference kernel (its scores and distances stay in L2)."""
_declined = [0]  # inference scores computed eagerly so far


class FusedBias(NamedTuple):
    """A bias the fused kernels evaluate: per head its distinct rates and their amplitudes.

    ``rate`` and ``amp`` are ``[H, U]`` (heads with fewer distinct rates padded with zero
    amplitudes); ``inverse [H, F]`` maps each basis function ``(h, f)`` to its rate; ``a``
    is the term's amplitudes (for the rates' gradients); ``root``: the profile reads ``d``
    (``exponential``), not ``d²`` (``rbf``); ``role``: the coordinates it reads.
    """

    rate: Tensor
    amp: Tensor
    inverse: Tensor
    a: Tensor
    root: bool
    role: str


@functools.cache
def _extension() -> ModuleType | None:
    """The compiled kernels, or ``None`` (with one warning) where they cannot be built."""
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(
            name=NAME, cpp_sources=[SOURCE.read_text()],
            functions=["biased_attention", "attention_train_forward",
                       "attention_train_backward"],
            extra_cflags=["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp",
                          "-fno-math-errno", "-fno-trapping-math"],
            extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # noqa: BLE001 - any build failure means: the eager kernels
        warnings.warn(f"bsatnp: building the fused CPU attention kernels failed, using the "
                      f"eager ones (same results, slower): {type(err).__name__}: {err}",
                      RuntimeWarning, stacklevel=4)
        return None


def _built() -> bool:
    """Whether this process has built (or tried to build) the kernels."""
    return _extension.cache_info().currsize > 0


@functools.cache
def _built_on_disk() -> bool:
    """Whether this source's build is in torch's extension cache already.

    Loading it then takes about a second. ``False`` wherever that cannot be told.
    """
    try:
        from torch.utils.cpp_extension import _get_build_directory

        folder = Path(_get_build_directory(NAME, verbose=False))
        main, library = folder / "main.cpp", folder / f"{NAME}.so"
        return (SOURCE.read_text() in main.read_text()
                and library.stat().st_mtime >= main.stat().st_mtime)
    except Exception:  # noqa: BLE001 - a private helper of torch: any failure means "no"
        return False


def fused_bias(bias: AttentionBias | None, q: Tensor,
               inference_scores: int | None = None) -> FusedBias | None:
    """The fused kernels' view of ``bias`` for queries ``q``, or ``None`` where they don't serve.

    They serve a float32 CPU problem whose bias has one ``rbf`` or ``exponential`` term on
    the Euclidean distance, when the runtime allows compiling and the extension builds.
    ``inference_scores``: the size of an inference problem (``None`` in training), counted
    towards :data:`INFERENCE_WARMUP` while the kernels are neither built nor on disk.
    """
    compile_ = current_runtime().compile
    if (bias is None or len(bias.terms) != 1 or q.device.type != "cpu"
            or q.dtype != torch.float32 or compile_ == "never"):
        return None
    term = bias.terms[0]
    spec = term.spec
    if spec.family not in ("rbf", "exponential") or spec.distance != "euclidean":
        return None
    if (inference_scores is not None and not _built() and compile_ != "always"
            and not _built_on_disk()):
        if _declined[0] < INFERENCE_WARMUP:
            _declined[0] += inference_scores
            return None
    if _extension() is None:
        return None
    a, b = term.a.detach(), term.b.detach()
    H = a.shape[0]
    groups = rate_groups(a, b, per_head=True)
    width = max(g.rates.numel() for g in groups)
    rate, amp = a.new_zeros(H, width), a.new_zeros(H, width)
    for h, group in enumerate(groups):
        rate[h, :group.rates.numel()] = group.rates
        amp[h, :group.rates.numel()] = group.amp[0]
    inverse = torch.cat([g.inverse for g in groups])
    return FusedBias(rate, amp, inverse, a, spec.family == "exponential", spec.role)


def _coords(coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor],
            fb: FusedBias) -> tuple[Tensor, Tensor]:
    return (coords_q[fb.role].float().contiguous(),
            coords_k[fb.role].float().transpose(1, 2).contiguous())


def attention(q: Tensor, k: Tensor, v: Tensor, coords_q: Mapping[str, Tensor],
              coords_k: Mapping[str, Tensor], fb: FusedBias,
              key_chunk: int = KEY_CHUNK) -> Tensor:
    """``softmax(q·kᵀ + bias)·v`` over every key, in one pass (inference; no mask).

    Args:
        q: Scaled queries ``[B, H, Lq, D]`` (float32).
        k: Keys ``[B, H, Lk, D]``.
        v: Values ``[B, H, Lk, Dv]``.
        coords_q: Per-role query coordinates ``{role: [B, Lq, C]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, C]}``.
        fb: The bias (:func:`fused_bias`).
        key_chunk: Keys per chunk of the online softmax.

    Returns:
        ``[B, H, Lq, Dv]``.
    """
    extension = _extension()
    assert extension is not None
    cq, ck_t = _coords(coords_q, coords_k, fb)
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    with record_function("bsatnp::fused_biased_attention"):
        extension.biased_attention(out, q.contiguous(), k.transpose(-1, -2).contiguous(),
                                   v.contiguous(), cq, ck_t, fb.amp, fb.rate, fb.root,
                                   key_chunk)
    return out


def _bias_gradients(sums: Tensor, fb: FusedBias) -> tuple[Tensor, Tensor]:
    """Float64 gradients ``[H, F]`` of the term's ``a`` and ``b``.

    From the kernels' per-row sums ``[B, H, Lq, U, 2]`` (``Σ dS·e_u``, ``Σ dS·r·e_u``).
    """
    per_rate = sums.double().sum(dim=(0, 2))  # [H, U, 2]
    grad_a = per_rate[..., 0].gather(1, fb.inverse)
    grad_b = -fb.a.double() * per_rate[..., 1].gather(1, fb.inverse)
    return grad_a, grad_b


def training_attention(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                       coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor],
                       lengths: Tensor, scale: float, fb: FusedBias) -> Tensor:
    """Biased attention of each task over its first ``lengths[b]`` keys, for training.

    Forward and backward run in the fused kernels; the forward keeps the probabilities.

    Tasks of different context sizes go in one call, without padded keys' work and without
    the per-task split: the kernels run each (task, head) over its own keys.

    Args:
        q: Queries ``[B, H, Lq, D]`` (unscaled).
        k: Keys ``[B, H, Lk, D]``, each task's valid ones first.
        v: Values ``[B, H, Lk, Dv]``, in the keys' order.
        a: The bias term's amplitudes ``[H, F]`` (the parameter).
        b: The bias term's rates ``[H, F]`` (the parameter).
        coords_q: Per-role query coordinates ``{role: [B, Lq, C]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, C]}``, in the keys' order.
        lengths: Valid keys per task ``[B]`` (int64); a task without any attends to nothing
            and gets zeros, with zero gradients.
        scale: Factor of ``q·kᵀ``.
        fb: The bias (:func:`fused_bias`).

    Returns:
        ``[B, H, Lq, Dv]``.
    """
    cq, ck_t = _coords(coords_q, coords_k, fb)
    return _TrainingAttention.apply(q, k, v, a, b, cq, ck_t, lengths.contiguous(), scale, fb)


class _TrainingAttention(torch.autograd.Function):
    """The fused kernels' forward (probabilities kept) and backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, cq: Tensor,
        ck_t: Tensor, lengths: Tensor, scale: float, fb: FusedBias,
    ) -> Tensor:
        extension = _extension()
        assert extension is not None
        B, H, Lq, _ = q.shape
        q_scaled = (q * scale).contiguous()
        k, v = k.contiguous(), v.contiguous()
        out = q.new_empty(B, H, Lq, v.shape[-1])
        p = q.new_empty(B, H, Lq, k.shape[2])
        with record_function("bsatnp::fused_attention_forward"):
            extension.attention_train_forward(out, p, q_scaled, k.transpose(-1, -2).contiguous(),
                                              v, cq, ck_t, fb.amp, fb.rate, fb.root, lengths)
        ctx.save_for_backward(q_scaled, k, v, out, p, cq, ck_t, lengths)
        ctx.scale, ctx.fb = scale, fb
        ctx.dtypes = (a.dtype, b.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        extension = _extension()
        assert extension is not None
        q_scaled, k, v, out, p, cq, ck_t, lengths = ctx.saved_tensors
        fb: FusedBias = ctx.fb
        dout = dout.float().contiguous()
        delta = (dout * out).sum(-1).contiguous()
        dq, dk, dv = torch.empty_like(q_scaled), torch.empty_like(k), torch.empty_like(v)
        with record_function("bsatnp::fused_attention_backward"):
            sums = extension.attention_train_backward(
                dq, dk, dv, p, dout, delta, q_scaled, k, v.transpose(-1, -2).contiguous(), cq,
                ck_t, fb.rate, fb.root, lengths)
        grad_a, grad_b = _bias_gradients(sums, fb)
        dtype_a, dtype_b = ctx.dtypes
        return (dq.mul_(ctx.scale), dk, dv, grad_a.to(dtype_a), grad_b.to(dtype_b),
                None, None, None, None, None)
