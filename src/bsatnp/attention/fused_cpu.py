"""Fused CPU kernels of biased attention over one key tile (C++, built once).

Between its matrix products a training step of biased attention makes many passes over each
``[B, H, Lq, Lk]`` score tile: the distances, the exponential basis (and the basis kept for
its parameters' gradients), the bias added to the scores, the softmax; in the backward
``dS = P·(dP − δ)`` and the reductions that give the bias parameters' gradients. The two
kernels of ``fused_cpu.cpp`` do each half in one pass per query row, whose scores stay in the
L1 cache, and leave the matrix products to BLAS:

* :func:`bias_softmax_`: ``S ← softmax(S + bias)`` in place;
* :func:`bias_softmax_backward_`: ``dP ← P·(dP − δ)`` in place, and the gradients of the
  bias's amplitudes and rates.

Inference needs no probabilities afterwards, so there one kernel does the whole attention:
:func:`attention` computes ``softmax(q·kᵀ + bias)·v`` for a block of query rows at a time,
``q·kᵀ`` and ``P·v`` included, with the block's scores in L1/L2 and each head's keys and
values in L2 (BLAS would write each score tile to memory and read it back twice).

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
from typing import NamedTuple

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
            functions=["bias_softmax", "bias_softmax_backward", "biased_attention"],
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


def bias_softmax_(scores: Tensor, coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor],
                  fb: FusedBias) -> Tensor:
    """``scores [B, H, Lq, Lk] ← softmax(scores + bias)`` over the keys, in place.

    Args:
        scores: Scaled ``q·kᵀ`` of one tile (contiguous float32).
        coords_q: Per-role query coordinates ``{role: [B, Lq, C]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, C]}``.
        fb: The bias (:func:`fused_bias`).
    """
    extension = _extension()
    assert extension is not None
    cq, ck_t = _coords(coords_q, coords_k, fb)
    with record_function("bsatnp::fused_bias_softmax"):
        extension.bias_softmax(scores, cq, ck_t, fb.amp, fb.rate, fb.root)
    return scores


def attention(q: Tensor, k: Tensor, v: Tensor, coords_q: Mapping[str, Tensor],
              coords_k: Mapping[str, Tensor], fb: FusedBias) -> Tensor:
    """``softmax(q·kᵀ + bias)·v`` over every key, in one pass (inference; no mask).

    Args:
        q: Scaled queries ``[B, H, Lq, D]`` (float32).
        k: Keys ``[B, H, Lk, D]``.
        v: Values ``[B, H, Lk, Dv]``.
        coords_q: Per-role query coordinates ``{role: [B, Lq, C]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, C]}``.
        fb: The bias (:func:`fused_bias`).

    Returns:
        ``[B, H, Lq, Dv]``.
    """
    extension = _extension()
    assert extension is not None
    cq, ck_t = _coords(coords_q, coords_k, fb)
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    with record_function("bsatnp::fused_biased_attention"):
        extension.biased_attention(out, q.contiguous(), k.transpose(-1, -2).contiguous(),
                                   v.contiguous(), cq, ck_t, fb.amp, fb.rate, fb.root)
    return out


def bias_softmax_backward_(p: Tensor, dp: Tensor, delta: Tensor, coords_q: Mapping[str, Tensor],
                           coords_k: Mapping[str, Tensor],
                           fb: FusedBias) -> tuple[Tensor, Tensor, Tensor]:
    """``dp ← p·(dp − δ)`` in place, and the gradients of the bias's ``a`` and ``b``.

    Args:
        p: The tile's probabilities ``[B, H, Lq, Lk]``.
        dp: ``dO·vᵀ`` of the tile (overwritten with the scores' gradient).
        delta: ``rowsum(dO ⊙ O)`` ``[B, H, Lq]``.
        coords_q: Per-role query coordinates ``{role: [B, Lq, C]}``.
        coords_k: Per-role key coordinates ``{role: [B, Lk, C]}``.
        fb: The bias (:func:`fused_bias`).

    Returns:
        ``(dS, grad_a, grad_b)``: the scores' gradient (``dp``) and float64 gradients
        ``[H, F]`` of the term's amplitudes and rates from this tile.
    """
    extension = _extension()
    assert extension is not None
    cq, ck_t = _coords(coords_q, coords_k, fb)
    with record_function("bsatnp::fused_bias_softmax_backward"):
        sums = extension.bias_softmax_backward(p, dp, delta.contiguous(), cq, ck_t, fb.rate,
                                               fb.root)
    per_rate = sums.double().sum(dim=(0, 2))  # [H, U, 2]: Σ dS·e, Σ dS·r·e
    grad_a = per_rate[..., 0].gather(1, fb.inverse)
    grad_b = -fb.a.double() * per_rate[..., 1].gather(1, fb.inverse)
    return dp, grad_a, grad_b
