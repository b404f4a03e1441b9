"""Fused biased attention with ``torch.nn.attention.flex_attention`` (the GPU fast path).

The bias is evaluated inside the kernel's ``score_mod`` from the coordinates of one
(query, key) pair, so neither scores nor bias are materialised (when compiled). Padding
is expressed as a block mask, so fully masked key blocks are skipped.

On CPU, eager flex_attention runs forward only (it materialises scores and refuses inputs
that need gradients) and its compiled backward is unsupported; the tiled backend serves
CPU training. Compiled CPU inference works (``compile=True``) but ``auto`` does not pick
it: side by side with the tiled scan it was 1.4–1.8× slower from 2,048 × 4,096 to
16,384 × 65,536 keys × queries, after 8–26 s of compiling per shape
(``benchmarks/flex_cpu.py``). Learnable bias parameters are captured as separate tensors
per use and per basis function, which the compiler needs for their gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache

import torch
from torch import Tensor

from bsatnp.attention.biases import AttentionBias
from bsatnp.attention.numerics import zero_keyless_rows


def flex_available() -> bool:
    """Whether this PyTorch build ships flex_attention."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _spread(param: Tensor, coords_q: Tensor) -> Tensor:
    """A per-head parameter ``[H]`` copied to ``[B, H, Lq]`` for its gradient.

    ``coords_q`` (``[B, Lq]``) gives the shape.

    The kernel's backward adds the gradient of every score element into the parameter it
    read: with one address per head those atomic additions contend and the training step
    is an order of magnitude slower (SPEC §9); one address per (batch, head, query) spreads
    them, and autograd sums the copies back into the parameter.
    """
    B, Lq = coords_q.shape
    return param[None, :, None].expand(B, -1, Lq).contiguous()


def _score_mod(
    bias: AttentionBias, coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor]
) -> Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]:
    """A ``score_mod`` adding the bias of one (batch, head, query, key) element."""
    captured = []
    for term in bias.terms:
        role = term.spec.role
        cq = [coords_q[role][..., d].contiguous() for d in range(coords_q[role].shape[-1])]
        ck = [coords_k[role][..., d].contiguous() for d in range(coords_k[role].shape[-1])]
        # One captured tensor per parameter use: flex's compiler cannot differentiate
        # several indexing operations on the same tensor. Without gradients, one contiguous
        # [H] tensor per basis function (the CPU compiler cannot lower expanded views).
        spread = torch.is_grad_enabled() and any(p.requires_grad for p in term.parameters())
        params = [None if p is None else
                  [_spread(p_f, cq[0]) if spread else p_f.detach().contiguous()
                   for p_f in p.unbind(-1)]
                  for p in term.params()]
        captured.append((term, cq, ck, params, spread))

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        for term, cq, ck, params, spread in captured:
            dist = term.distance([c[b, q_idx] for c in cq], [c[b, kv_idx] for c in ck])
            for f in range(len(params[0])):  # term by term: stacking the basis fails to lower
                at_f = [None if p is None else p[f][b, h, q_idx] if spread else p[f][h]
                        for p in params]
                score = score + term.basis_term(dist, *at_f)
        return score

    return score_mod


def flex_attention_biased(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor],
    coords_k: Mapping[str, Tensor],
    key_mask: Tensor | None,
    scale: float,
    compile: bool | None = None,
) -> Tensor:
    """Biased attention through flex_attention.

    Shapes and semantics as :func:`bsatnp.attention.dense.dense_attention`.

    Args (beyond those of ``dense_attention``):
        compile: Use the compiled kernel (default: on CUDA only; on CPU for inference
            only, one compile per shape).

    Returns:
        ``[B, H, Lq, Dv]``; rows without any valid key are zero.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compile = q.is_cuda if compile is None else compile
    score_mod = None if bias is None else _score_mod(bias, coords_q, coords_k)
    block_mask = None
    if key_mask is not None or (compile and not q.is_cuda):
        # Compiled CPU flex without a block mask allocates a Lq × Lk buffer per thread.
        mask = key_mask.contiguous() if key_mask is not None else torch.ones(
            q.shape[0], k.shape[2], dtype=torch.bool, device=q.device)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return mask[b, kv_idx]

        B, _, Lq, _ = q.shape
        block_mask = create_block_mask(
            mask_mod, B, None, Lq, k.shape[2], device=str(q.device), _compile=compile
        )
    fn = _compiled_flex() if compile else flex_attention
    out = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out if key_mask is None else zero_keyless_rows(out, key_mask)
