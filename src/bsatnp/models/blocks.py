"""The KRBlock: one attention and one FFN shared by the context and test streams."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from bsatnp.attention.biases import BiasSpec
from bsatnp.attention.mha import BiasedMultiheadAttention
from bsatnp.models.layers import MLP


class KRBlock(nn.Module):
    """Pre-norm transformer block in which every token attends to the context only.

    :meth:`attend` updates query tokens ``z`` (context or test) from the context tokens
    ``z_ctx`` at the block's input::

        z = z + MHA(LN1(z) → LN1(z_ctx))         # test → context and context → context
        z = z + FFN(LN2(z))

    One MHA, one LN1, one LN2 and one FFN serve both streams; padded context slots are
    masked as keys only (their own rows are computed but never read).

    Args:
        dim: Token width ``E``.
        qkv_dim: Query/key/value width.
        num_heads: Attention heads.
        ffn_dim: Hidden width of the FFN.
        bias_specs: Attention biases (one per biased role).
        ln_eps: LayerNorm epsilon.
        backend: Attention backend.
        tile_q: Queries per tile (tiled backend).
        tile_k: Keys per tile (tiled backend).
    """

    def __init__(
        self,
        dim: int,
        qkv_dim: int,
        num_heads: int,
        ffn_dim: int,
        bias_specs: tuple[BiasSpec, ...],
        ln_eps: float = 1e-6,
        backend: str = "auto",
        tile_q: int | None = None,
        tile_k: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = BiasedMultiheadAttention(
            dim, qkv_dim, num_heads, bias_specs, backend, tile_q, tile_k
        )
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.ffn = MLP((dim, ffn_dim, dim))

    def attend(
        self,
        z: Tensor,
        z_ctx: Tensor,
        coords: Mapping[str, Tensor],
        coords_ctx: Mapping[str, Tensor],
        mask_ctx: Tensor,
    ) -> Tensor:
        """Update query tokens ``z [B, L, E]`` that attend to context tokens ``z_ctx``.

        The context stream is ``attend(z_ctx, z_ctx, ...)``; any set of test tokens is
        updated from the same ``z_ctx`` without changing it, so test points can be
        processed in chunks against a context encoded once.

        Args:
            z: Query tokens (context or test).
            z_ctx: Context tokens at the input of this block ``[B, Lc, E]``.
            coords: Per-role coordinates of the queries ``{role: [B, L, Dr]}``.
            coords_ctx: Per-role coordinates of the context ``{role: [B, Lc, Dr]}``.
            mask_ctx: Valid context slots ``[B, Lc]``.
        """
        keys = self.norm1(z_ctx)
        queries = keys if z is z_ctx else self.norm1(z)
        z = z + self.attn(queries, keys, coords, coords_ctx, mask_ctx)
        return z + self.ffn(self.norm2(z))
