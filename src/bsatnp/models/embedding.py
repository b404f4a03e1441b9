"""Token embedding: ``[observed-flag embedding, embedded roles, f]`` → MLP → LayerNorm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from bsatnp.batch import Batch
from bsatnp.models.layers import MLP


class TokenEmbedding(nn.Module):
    """Embed context and test points into tokens ``[B, Lc + Lt, E]``.

    Context tokens read ``(flag=1, roles, f_ctx)``; test tokens ``(flag=0, roles, 0)``.
    Roles left out of ``roles`` (e.g. those used as attention biases) are not in the token,
    which makes the model invariant to translating them.

    Args:
        roles: Embedded roles and their widths in token order, e.g. ``{"x": 10}``.
        dim_f: Value width ``Df``.
        obs_dim: Width of the observed-flag embedding.
        hidden: Hidden widths of the MLP.
        dim: Token width ``E``.
        ln_eps: LayerNorm epsilon.
    """

    def __init__(self, roles: Mapping[str, int], dim_f: int, obs_dim: int,
                 hidden: Sequence[int], dim: int, ln_eps: float) -> None:
        super().__init__()
        self.roles = tuple(roles)
        width = obs_dim + sum(roles.values()) + dim_f
        self.obs = nn.Embedding(2, obs_dim)
        self.mlp = MLP((width, *hidden, dim))
        self.norm = nn.LayerNorm(dim, eps=ln_eps)

    def _tokens(self, batch: Batch, which: str, observed: bool, f: Tensor) -> Tensor:
        B, L = f.shape[:2]
        flag = torch.full((B, L), int(observed), dtype=torch.long, device=f.device)
        parts = [self.obs(flag).to(f.dtype)]
        parts += [getattr(batch, f"{r}_{which}") for r in self.roles]
        return torch.cat([*parts, f], dim=-1)

    def context(self, batch: Batch) -> Tensor:
        """Context tokens ``[B, Lc, E]``."""
        return self._embed(self._tokens(batch, "ctx", True, batch.f_ctx))

    def test(self, batch: Batch) -> Tensor:
        """Test tokens ``[B, Lt, E]`` (each embedded on its own: no context is read)."""
        f = batch.f_ctx.new_zeros(batch.batch_size, batch.n_test, batch.f_ctx.shape[-1])
        return self._embed(self._tokens(batch, "test", False, f))

    def _embed(self, tokens: Tensor) -> Tensor:
        """MLP → LayerNorm, in float32 even under autocast: the blocks' residual stream."""
        return self.norm(self.mlp(tokens)).to(tokens.dtype)

    def forward(self, batch: Batch) -> Tensor:
        """Tokens ``[B, Lc + Lt, E]``: context slots first, then test points."""
        return torch.cat([self.context(batch), self.test(batch)], dim=1)
