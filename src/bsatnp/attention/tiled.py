"""Biased *scan* attention: tiles of queries × keys with an online softmax.

The bias is computed for one tile at a time and never materialised in full, so memory is
O(tile) instead of O(Lq·Lk). The backward pass recomputes each tile (as FlashAttention
does) and obtains the gradients of the bias parameters tile by tile, so training memory is
bounded too.

Forward, for one query tile with running row max ``m``, row sum ``ℓ`` and output ``O``, and
for each key tile with scores ``S = scale·q·kᵀ + bias`` (masked keys at −∞)::

    m' = max(m, rowmax S);  P = exp(S − m');  ℓ' = e^{m−m'}·ℓ + rowsum P;  O' = e^{m−m'}·O + P·V

and finally ``O/ℓ``. When all keys fit one tile, the row softmax is computed in place by
PyTorch's fused kernel instead, in the forward and in the backward alike (no row
statistics are needed then). Tasks without any valid key attend uniformly inside the
kernel and return zeros (with zero gradients).

Small training problems (one key tile, at most :data:`KEEP_ELEMENTS` scores) keep their
probability tiles and the bias's autograd graph from the forward instead of recomputing
them in the backward: about 15% less time per training step for the memory ordinary
autograd would use at that size (``benchmarks/forward.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bsatnp.attention import fused_cpu
from bsatnp.attention.biases import AttentionBias, slice_coords
from bsatnp.attention.locality import FarTiles, gather_rows, morton_order
from bsatnp.attention.numerics import builds_graph, exp_
from bsatnp.attention.runtime import current_runtime

TILE_K_TRAIN = 1024
"""Default keys per tile when gradients are needed."""
TILE_K_INFERENCE = 4096
"""Default keys per tile without gradients (where the fused kernel does not serve)."""
TILE_ELEMENTS = 1 << 22
"""Default size of one score tile, ``B·H·tile_q·tile_k`` elements (16 MiB in float32)."""
FAR_TILE = 512
"""Default queries and keys per tile when far tiles are skipped: small square tiles cover
small boxes. 512 × 512 was the fastest of the shapes tried once (256–1024 queries × 256–4096
keys, 20,000 points under the SIR bias, 1 thread; not kept as a benchmark)."""
KEEP_ELEMENTS = 3 << 25
"""Most floats the training forward of one attention call may keep for the backward: the
probabilities (one per score) plus the bias graph's basis (two per score and distinct rate
of a head). The paper's training batch with the constant init needs 3·B·H·Lq·Lk ≈ 76M
(~300 MiB); larger problems, biases with many distinct rates (e.g. the ``spread`` init,
where keeping is slower than recomputing) and any problem when set to 0 recompute tiles."""


class _Plan(NamedTuple):
    """How a problem is cut into tiles."""

    tile_q: int
    tile_k: int
    key_tiles: list[tuple[int, Tensor | None]]  # (start, additive mask [B, 1, 1, tk] or None)
    has_key: Tensor | None  # [B] tasks with at least one valid key; None: all have
    keep_tiles: bool  # training forward keeps its tiles for the backward
    far: FarTiles | None = None  # tiles beyond the bias's reach (points in curve order)

    @property
    def single_key_tile(self) -> bool:
        return len(self.key_tiles) == 1


def _plan(
    q: Tensor, Lk: int, key_mask: Tensor | None, tile_q: int | None, tile_k: int | None,
    training: bool, keep_tiles: bool,
) -> _Plan:
    B, H, Lq, _ = q.shape
    tk = max(1, min(Lk, tile_k or (TILE_K_TRAIN if training else TILE_K_INFERENCE)))
    tq = max(1, min(Lq, tile_q or max(16, TILE_ELEMENTS // (B * H * tk))))
    has_key = None
    if key_mask is not None:
        has_key = key_mask.any(dim=1)
        # Tasks without a valid key attend uniformly (finite); their output is zeroed.
        key_mask = key_mask | ~has_key[:, None]
        if bool(has_key.all()):
            has_key = None
    tiles: list[tuple[int, Tensor | None]] = []
    for j in range(0, Lk, tk):
        mask_t = None if key_mask is None else key_mask[:, j : j + tk]
        if mask_t is None or bool(mask_t.all()):
            tiles.append((j, None))
            continue
        additive = torch.zeros(mask_t.shape, dtype=q.dtype, device=q.device)
        tiles.append((j, additive.masked_fill_(~mask_t, float("-inf"))[:, None, None, :]))
    return _Plan(tq, tk, tiles, has_key, keep_tiles and training and len(tiles) == 1)


def _scores_(q_t: Tensor, k_t: Tensor, bias_t: Tensor | None, mask_t: Tensor | None) -> Tensor:
    """Scores ``q_t·k_tᵀ + bias_t + mask_t`` of one tile ``[B, H, tq, tk]``.

    Args:
        q_t: Scaled queries ``[B, H, tq, D]``.
        k_t: Keys ``[B, H, tk, D]``.
        bias_t: Bias ``[B, H, tq, tk]`` (contiguous) or ``None``; overwritten with the scores.
        mask_t: Additive key mask ``[B, 1, 1, tk]`` (0 or −inf) or ``None``.
    """
    B, H, tq, D = q_t.shape
    tk = k_t.shape[2]
    qf, kf = q_t.reshape(B * H, tq, D), k_t.reshape(B * H, tk, D).transpose(1, 2)
    if bias_t is None:
        scores = torch.bmm(qf, kf).view(B, H, tq, tk)
        return scores if mask_t is None else scores.add_(mask_t)
    if mask_t is not None:
        bias_t.add_(mask_t)
    return bias_t.view(B * H, tq, tk).baddbmm_(qf, kf).view(B, H, tq, tk)


def _tile_scores(
    q: Tensor, k: Tensor, bias: AttentionBias | None, coords_q: Mapping[str, Tensor],
    coords_k: Mapping[str, Tensor], plan: _Plan, i: int, j: int, mask_t: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Scores of query tile ``i`` × key tile ``j`` and the bias tensor (with its graph)."""
    bias_t = None
    if bias is not None and not (plan.far is not None and plan.far.far(i, j)):
        bias_t = bias(
            slice_coords(coords_q, i, i + plan.tile_q), slice_coords(coords_k, j, j + plan.tile_k)
        )
    q_t, k_t = q[:, :, i : i + plan.tile_q], k[:, :, j : j + plan.tile_k]
    return _scores_(q_t, k_t, None if bias_t is None else bias_t.detach(), mask_t), bias_t


def _zero_empty(x: Tensor, plan: _Plan) -> Tensor:
    """Zero rows of tasks without a valid key ``x [B, H, L, Dv]``."""
    if plan.has_key is None:
        return x
    return torch.where(plan.has_key[:, None, None, None], x, torch.zeros_like(x))


def tiled_forward(
    q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor], scale: float, plan: _Plan,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Scan forward without autograd.

    Returns:
        ``(out [B, H, Lq, Dv], m, ell)``: the output and, when there are several key tiles,
        the row max of the scores and the row sum of ``exp(scores − m)`` ``[B, H, Lq]``
        (``None`` with a single key tile). ``m`` and ``ell`` are kept apart (not as
        ``m + log ell``) so that ``exp(s − m)`` is exact to round-off for large scores.
    """
    B, H, Lq, _ = q.shape
    q = q * scale
    out = q.new_empty(B, H, Lq, v.shape[-1])
    if plan.single_key_tile:
        (_, mask_t), = plan.key_tiles
        for i in range(0, Lq, plan.tile_q):
            scores, _ = _tile_scores(q, k, bias, coords_q, coords_k, plan, i, 0, mask_t)
            p = torch.softmax(scores, dim=-1, out=scores)
            torch.matmul(p, v, out=out[:, :, i : i + plan.tile_q])
        return _zero_empty(out, plan), None, None
    m_all, ell_all = q.new_empty(B, H, Lq), q.new_empty(B, H, Lq)
    for i in range(0, Lq, plan.tile_q):
        m = ell = acc = None
        for j, mask_t in plan.key_tiles:
            scores, _ = _tile_scores(q, k, bias, coords_q, coords_k, plan, i, j, mask_t)
            pv_j = v[:, :, j : j + plan.tile_k]
            m_tile = scores.amax(dim=-1)
            m_new = m_tile if m is None else torch.maximum(m, m_tile)
            # A row whose keys so far are all masked has m = −inf: shift by 0 instead.
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = exp_(scores.sub_(shift[..., None]))
            if m is None:
                ell, acc = p.sum(dim=-1), torch.matmul(p, pv_j)
            else:
                alpha = exp_(m - shift)
                ell = ell * alpha + p.sum(dim=-1)
                acc = acc * alpha[..., None] + torch.matmul(p, pv_j)
            m = m_new
        rows = slice(i, i + plan.tile_q)
        out[:, :, rows] = acc / ell[..., None]
        m_all[:, :, rows], ell_all[:, :, rows] = m, ell
    return _zero_empty(out, plan), m_all, ell_all


def _forward_keeping_tiles(
    q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor], scale: float, plan: _Plan,
) -> tuple[Tensor, list[tuple[Tensor, Tensor | None]]]:
    """Single-key-tile forward that keeps what the backward needs.

    Returns:
        ``(out [B, H, Lq, Dv], tiles)``: per query tile, the probabilities ``[B, H, tq, Lk]``
        and the bias tensor with its autograd graph (``None`` without a bias).
    """
    q = q * scale
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    (_, mask_t), = plan.key_tiles
    tiles: list[tuple[Tensor, Tensor | None]] = []
    for i in range(0, q.shape[2], plan.tile_q):
        with torch.enable_grad():  # the bias graph, for its parameters' gradients
            scores, bias_t = _tile_scores(q, k, bias, coords_q, coords_k, plan, i, 0, mask_t)
        p = torch.softmax(scores, dim=-1, out=scores)
        torch.matmul(p, v, out=out[:, :, i : i + plan.tile_q])
        tiles.append((p, bias_t))
    return _zero_empty(out, plan), tiles


class _TiledBiasedAttention(torch.autograd.Function):
    """Scan attention with a tile-recomputing backward (gradients for bias params too)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias | None,
        coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor], scale: float,
        plan: _Plan, *params: Tensor,
    ) -> Tensor:
        ctx.tiles = None
        if plan.keep_tiles:
            out, ctx.tiles = _forward_keeping_tiles(q, k, v, bias, coords_q, coords_k, scale, plan)
            m = ell = None
        else:
            out, m, ell = tiled_forward(q, k, v, bias, coords_q, coords_k, scale, plan)
        ctx.save_for_backward(q, k, v, out, m, ell)
        ctx.bias, ctx.coords_q, ctx.coords_k = bias, coords_q, coords_k
        ctx.scale, ctx.plan, ctx.params = scale, plan, params
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, m, ell = ctx.saved_tensors
        plan: _Plan = ctx.plan
        params: Sequence[Tensor] = ctx.params
        n_fixed = 8  # q, k, v, bias, coords_q, coords_k, scale, plan
        want = [ctx.needs_input_grad[n_fixed + n] for n in range(len(params))]
        wanted = [p for p, w in zip(params, want) if w]
        # Accumulated over all tiles in float64: the sums are long and cancel.
        grad_wanted = [torch.zeros_like(p, dtype=torch.float64) for p in wanted]
        dout = _zero_empty(dout, plan)
        delta = (dout * out).sum(-1, keepdim=True)  # [B, H, Lq, 1]
        if m is not None:  # P = exp(S − m)/ℓ: fold 1/ℓ into dO and delta
            dout = dout / ell[..., None]
            delta = delta / ell[..., None]
        q_scaled = q * ctx.scale
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        kept = iter(ctx.tiles) if ctx.tiles is not None else None
        for i in range(0, q.shape[2], plan.tile_q):
            rows = slice(i, i + plan.tile_q)
            q_t, do_t, delta_t = q_scaled[:, :, rows], dout[:, :, rows], delta[:, :, rows]
            for j, mask_t in plan.key_tiles:
                cols = slice(j, j + plan.tile_k)
                k_j, v_j = k[:, :, cols], v[:, :, cols]
                if kept is not None:
                    p, bias_t = next(kept)
                else:
                    with torch.enable_grad():
                        scores, bias_t = _tile_scores(
                            q_scaled, k, ctx.bias, ctx.coords_q, ctx.coords_k, plan, i, j, mask_t
                        )
                    if m is None:
                        p = torch.softmax(scores, dim=-1, out=scores)
                    else:
                        p = exp_(scores.sub_(m[:, :, rows, None]))
                dv[:, :, cols] += torch.matmul(p.transpose(-1, -2), do_t)
                dp = torch.matmul(do_t, v_j.transpose(-1, -2))
                ds = dp.sub_(delta_t).mul_(p)
                dq[:, :, rows] += torch.matmul(ds, k_j)
                dk[:, :, cols] += torch.matmul(ds.transpose(-1, -2), q_t)
                if bias_t is not None and wanted:
                    # Kept graphs are retained: a second backward (retain_graph) reuses them.
                    grads = torch.autograd.grad(bias_t, wanted, ds,
                                                retain_graph=kept is not None)
                    for acc, g in zip(grad_wanted, grads):
                        acc += g
        dq.mul_(ctx.scale)
        it = iter(grad_wanted)
        grads = [next(it).to(p.dtype) if w else None for p, w in zip(params, want)]
        return (dq, dk, dv, None, None, None, None, None, *grads)


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

    Args (beyond those of ``dense_attention``):
        tile_q: Queries per tile (default: fill a 4M-element score tile).
        tile_k: Keys per tile (default 1024 with gradients, 4096 without).

    Returns:
        ``[B, H, Lq, Dv]``.
    """
    B, H, Lq, _ = q.shape
    training = builds_graph(q, k, v, bias=bias)
    if training and (tile_k is None or tile_k >= k.shape[2]):
        fused = _fused_training(q, k, v, bias, coords_q, coords_k, key_mask, scale)
        if fused is not None:
            return fused
    keep_tiles = training and (  # judged on the whole batch
        B * H * Lq * k.shape[2] * _kept_per_score(bias) <= KEEP_ELEMENTS
    )
    if key_mask is not None and B > 1 and not bool(key_mask.all()):
        return _per_task(q, k, v, bias, coords_q, coords_k, key_mask, scale, tile_q, tile_k,
                         keep_tiles)
    return _attend(q, k, v, bias, coords_q, coords_k, key_mask, scale, tile_q, tile_k,
                   keep_tiles)


def _fused_training(
    q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor], key_mask: Tensor | None,
    scale: float,
) -> Tensor | None:
    """The training attention through the fused kernels, or ``None`` where they don't serve.

    They serve a bias they compute (:func:`~bsatnp.attention.fused_cpu.fused_bias`) when the
    probabilities they keep, one float per score, fit :data:`KEEP_ELEMENTS`. Each task's
    valid keys are moved to the front (a no-op for the usual prefix masks) and the kernels
    run over those alone: padding costs nothing, and no per-task split is needed.
    """
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    if B * H * Lq * Lk > KEEP_ELEMENTS:
        return None
    fb = fused_cpu.fused_bias(bias, q)
    if fb is None or bias is None:
        return None
    coords_q = {r: c.detach() for r, c in coords_q.items()}
    coords_k = {r: c.detach() for r, c in coords_k.items()}
    if key_mask is None:
        lengths = torch.full((B,), Lk, dtype=torch.long)
    else:
        lengths = key_mask.sum(dim=1)
        if not torch.equal(key_mask, torch.arange(Lk, device=k.device) < lengths[:, None]):
            order = torch.argsort((~key_mask).to(torch.uint8), dim=1, stable=True)
            k, v = gather_rows(k, order, 2), gather_rows(v, order, 2)
            coords_k = {r: gather_rows(c, order, 1) for r, c in coords_k.items()}
    term = bias.terms[0]
    return fused_cpu.training_attention(q, k, v, term.a, term.b, coords_q, coords_k,
                                        lengths.cpu(), scale, fb)


def _kept_per_score(bias: AttentionBias | None) -> int:
    """Floats a kept forward holds per score.

    1 (the probabilities), plus 2 per distinct rate of a head for an ``rbf`` or
    ``exponential`` term (:func:`~bsatnp.attention.exp_basis.exp_basis` keeps its basis) and
    1 for any other term (its distances: the ``tisa`` backward recomputes its terms).
    """
    kept = 1
    for term in bias.terms if bias is not None else ():
        if term.spec.family not in ("rbf", "exponential"):
            kept += 1
            continue
        b = term.params()[1]
        rates = 1 if b is None else max(int(torch.unique(row).numel()) for row in b.detach())
        kept += 2 * rates
    return kept


def _attend(
    q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor], key_mask: Tensor | None,
    scale: float, tile_q: int | None, tile_k: int | None, keep_tiles: bool,
) -> Tensor:
    """:func:`tiled_attention` on one batch, without the per-task split."""
    params = tuple(bias.parameters()) if bias is not None else ()
    training = builds_graph(q, k, v, bias=bias)
    plan = _plan(q, k.shape[2], key_mask, tile_q, tile_k, training, keep_tiles)
    coords_q = {r: c.detach() for r, c in coords_q.items()}
    coords_k = {r: c.detach() for r, c in coords_k.items()}
    if not training and plan.has_key is None and all(m is None for _, m in plan.key_tiles):
        B, H, Lq, _ = q.shape  # inference over unmasked keys: the fused kernel, any Lk
        fb = fused_cpu.fused_bias(bias, q, B * H * Lq * k.shape[2])
        if fb is not None:
            with torch.no_grad():
                return fused_cpu.attention(q * scale, k, v, coords_q, coords_k, fb)
    reaches = _far_reaches(bias, plan)
    order_q = None
    if reaches is not None:  # queries and keys in Z-order of the biased roles
        order_q, order_k = (morton_order(torch.cat([c[r] for r in reaches], dim=-1))
                            for c in (coords_q, coords_k))
        q, k, v = gather_rows(q, order_q, 2), gather_rows(k, order_k, 2), gather_rows(v, order_k, 2)
        coords_q = {r: gather_rows(c, order_q, 1) for r, c in coords_q.items()}
        coords_k = {r: gather_rows(c, order_k, 1) for r, c in coords_k.items()}
        key_mask = None if key_mask is None else gather_rows(key_mask, order_k, 1)
        plan = _plan(q, k.shape[2], key_mask, tile_q or FAR_TILE, tile_k or FAR_TILE,
                     training, keep_tiles)
        plan = plan._replace(
            far=FarTiles(reaches, coords_q, coords_k, plan.tile_q, plan.tile_k)
        )
    if not training:
        with torch.no_grad():
            out = tiled_forward(q, k, v, bias, coords_q, coords_k, scale, plan)[0]
    else:
        out = _TiledBiasedAttention.apply(
            q, k, v, bias, coords_q, coords_k, scale, plan, *params
        )
    return out if order_q is None else gather_rows(out, order_q.argsort(dim=1), 2)


def _far_reaches(
    bias: AttentionBias | None, plan: _Plan
) -> dict[str, tuple[str, float]] | None:
    """The bias's reaches when tiles beyond them are worth finding, else ``None``.

    Worth it with several key tiles and a bias that vanishes far out (see
    :mod:`bsatnp.attention.locality`); the runtime's ``far_tiles=False`` turns it off.
    """
    if bias is None or plan.single_key_tile or not current_runtime().far_tiles:
        return None
    return bias.reaches()


def _per_task(
    q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias | None,
    coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor], key_mask: Tensor,
    scale: float, tile_q: int | None, tile_k: int | None, keep_tiles: bool,
) -> Tensor:
    """Attend task by task over its valid keys only: padded keys cost nothing.

    Context sets of different sizes are padded to a common length; dropping the padding per
    task is exact (masked keys have zero weight) and saves their share of the work.
    """
    outs = []
    for b in range(q.shape[0]):
        keep = key_mask[b].nonzero().squeeze(1)
        q_b = q[b : b + 1]
        if keep.numel() == 0:
            outs.append(q_b.new_zeros(*q_b.shape[:3], v.shape[-1]))
            continue
        outs.append(_attend(
            q_b, k[b : b + 1].index_select(2, keep), v[b : b + 1].index_select(2, keep), bias,
            {r: c[b : b + 1] for r, c in coords_q.items()},
            {r: c[b : b + 1].index_select(1, keep) for r, c in coords_k.items()},
            None, scale, tile_q, tile_k, keep_tiles,
        ))
    return torch.cat(outs, dim=0)
