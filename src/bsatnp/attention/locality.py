"""Spatial locality for the tiled backend: points in curve order, and far tiles found.

Distance biases vanish beyond a reach (:meth:`AttentionBias.reaches`): a far key still
takes part in the softmax (its bias is 0, not −∞), but its bias need not be computed.
With queries and keys in the order of a Z-order (Morton) curve, every tile covers a compact
box, and a query tile × key tile pair whose boxes are farther apart than the reach in
every biased role has a bias of exactly 0: :class:`FarTiles` finds these pairs and the
tiled backend computes plain ``q·kᵀ`` scores there. Under the SIR model's bias (reach ~9)
on 25,000 points 64 units wide, 61% of the tile pairs are far and the attention takes half
the time (``benchmarks/far_tiles.py``; docs/benchmarks.md). Sorting permutes keys
(attention does not depend on their order) and queries (the output is put back in order),
so results equal the unsorted ones to float round-off.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from bsatnp.geometry import BOX_DISTANCES

MORTON_BITS = 62
"""Bits of a Morton code, shared by the coordinate axes."""


def morton_order(points: Tensor) -> Tensor:
    """Per task, the permutation that puts ``points [B, L, D]`` in Z-order: ``[B, L]``.

    Each task's points are scaled to its own bounding box and quantised to
    ``MORTON_BITS // D`` bits per axis (at least 1); the order of points in the same cell
    is arbitrary.
    """
    B, L, D = points.shape
    bits = max(1, MORTON_BITS // D)
    x = points.detach().double()
    lo = x.amin(dim=1, keepdim=True)
    span = (x.amax(dim=1, keepdim=True) - lo).clamp_min(torch.finfo(torch.float64).tiny)
    cells = ((x - lo) / span * (2**bits - 1)).round().long()  # [B, L, D]
    code = torch.zeros(B, L, dtype=torch.long, device=points.device)
    for bit in range(bits):
        for d in range(D):
            code |= ((cells[..., d] >> bit) & 1) << (bit * D + d)
    return code.argsort(dim=1)


def _boxes(coords: Tensor, tile: int) -> tuple[Tensor, Tensor]:
    """Per tile of ``tile`` consecutive points, the box of ``coords [B, L, D]``.

    Returns:
        ``(lo, hi)``, each ``[B, n_tiles, D]`` in float64.
    """
    x = coords.detach().double()
    B, L, D = x.shape
    n = -(-L // tile)
    pad = n * tile - L
    if pad:  # repeat the last point: it does not widen the last box
        x = torch.cat([x, x[:, -1:].expand(B, pad, D)], dim=1)
    x = x.view(B, n, tile, D)
    return x.amin(dim=2), x.amax(dim=2)


class FarTiles:
    """Which query tile × key tile pairs lie beyond the bias's reach in every role.

    Args:
        reaches: ``{role: (distance name, reach)}`` from :meth:`AttentionBias.reaches`.
        coords_q: Query coordinates ``{role: [B, Lq, D]}`` (in tile order).
        coords_k: Key coordinates ``{role: [B, Lk, D]}``.
        tile_q: Queries per tile.
        tile_k: Keys per tile.
    """

    def __init__(
        self, reaches: Mapping[str, tuple[str, float]], coords_q: Mapping[str, Tensor],
        coords_k: Mapping[str, Tensor], tile_q: int, tile_k: int,
    ) -> None:
        self.tile_q, self.tile_k = tile_q, tile_k
        self.roles = [
            (BOX_DISTANCES[distance], reach, _boxes(coords_q[role], tile_q),
             _boxes(coords_k[role], tile_k))
            for role, (distance, reach) in reaches.items()
        ]
        self._row: tuple[int, list[bool]] = (-1, [])

    def far(self, i: int, j: int) -> bool:
        """Whether the bias is 0 in every task between the tiles starting at ``i``, ``j``."""
        if self._row[0] != i:
            self._row = (i, self._far_row(i // self.tile_q))
        return self._row[1][j // self.tile_k]

    def _far_row(self, row: int) -> list[bool]:
        """For query tile ``row``, one flag per key tile."""
        far = None
        for distance, reach, (lo_q, hi_q), (lo_k, hi_k) in self.roles:
            gaps = torch.maximum(lo_k - hi_q[:, row, None], lo_q[:, row, None] - hi_k)
            beyond = (distance(gaps.clamp_min(0.0)) > reach).all(dim=0)  # [n_key_tiles]
            far = beyond if far is None else far & beyond
        assert far is not None
        return far.tolist()


def gather_rows(x: Tensor, order: Tensor, dim: int) -> Tensor:
    """``x`` with its rows along ``dim`` taken per task in ``order [B, L]`` (dim 0 is B)."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = order.shape
    index = order.view(shape).expand(*x.shape[:dim], order.shape[1], *x.shape[dim + 1:])
    return x.gather(dim, index)
