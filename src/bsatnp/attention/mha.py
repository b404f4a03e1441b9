"""Multi-head attention whose scores carry a distance-based bias."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from bsatnp.attention.biases import AttentionBias, BiasSpec
from bsatnp.attention.functional import biased_attention


class BiasedMultiheadAttention(nn.Module):
    """Multi-head attention: ``softmax(q·kᵀ/√d + bias(coords)) · v``, then an output projection.

    Args:
        dim: Token width ``E`` (input and output).
        qkv_dim: Width of the query/key/value projections (split over heads).
        num_heads: Number of heads ``H``.
        bias_specs: One :class:`BiasSpec` per biased role; empty for plain attention.
        backend: Attention backend (``auto``, ``dense``, ``tiled``, ``flex``).
        tile_q: Queries per tile for the tiled backend (``None``: automatic).
        tile_k: Keys per tile for the tiled backend (``None``: 1024).
    """

    def __init__(
        self,
        dim: int = 64,
        qkv_dim: int = 128,
        num_heads: int = 4,
        bias_specs: tuple[BiasSpec, ...] = (),
        backend: str = "auto",
        tile_q: int | None = None,
        tile_k: int | None = None,
    ) -> None:
        super().__init__()
        if qkv_dim % num_heads:
            raise ValueError(f"qkv_dim={qkv_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = qkv_dim // num_heads
        self.proj_q = nn.Linear(dim, qkv_dim)
        self.proj_k = nn.Linear(dim, qkv_dim)
        self.proj_v = nn.Linear(dim, qkv_dim)
        self.proj_out = nn.Linear(qkv_dim, dim)
        self.bias = AttentionBias(bias_specs, num_heads) if bias_specs else None
        self.backend, self.tile_q, self.tile_k = backend, tile_q, tile_k

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, L, H·Dh]`` → ``[B, H, L, Dh]``."""
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x_q: Tensor,
        x_k: Tensor,
        coords_q: Mapping[str, Tensor],
        coords_k: Mapping[str, Tensor],
        key_mask: Tensor | None,
    ) -> Tensor:
        """Attend from ``x_q [B, Lq, E]`` to ``x_k [B, Lk, E]``; returns ``[B, Lq, E]``.

        Args:
            x_q: Query tokens.
            x_k: Key/value tokens.
            coords_q: Per-role query coordinates ``{role: [B, Lq, Dr]}``.
            coords_k: Per-role key coordinates ``{role: [B, Lk, Dr]}``.
            key_mask: Valid keys ``[B, Lk]`` (bool) or ``None``.
        """
        q, k, v = self._heads(self.proj_q(x_q)), self._heads(self.proj_k(x_k)), self._heads(
            self.proj_v(x_k)
        )
        out = biased_attention(
            q, k, v, self.bias, coords_q, coords_k, key_mask,
            backend=self.backend, tile_q=self.tile_q, tile_k=self.tile_k,
        )
        B, H, Lq, Dh = out.shape
        return self.proj_out(out.transpose(1, 2).reshape(B, Lq, H * Dh))
