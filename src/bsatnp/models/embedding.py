"""Token embedding: ``[observed-flag embedding, embedded roles, f]`` → MLP → LayerNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bsatnp.batch import Batch
from bsatnp.models.config import BSATNPConfig
from bsatnp.models.layers import MLP


class TokenEmbedding(nn.Module):
    """Embed context and test points into tokens ``[B, Lc + Lt, E]``.

    Context tokens read ``(flag=1, roles, f_ctx)``; test tokens ``(flag=0, roles, 0)``.
    Roles configured as ``bias`` are *not* in the token, which makes the model invariant
    to translating them.

    Args:
        config: Model configuration.
    """

    def __init__(self, config: BSATNPConfig) -> None:
        super().__init__()
        self.roles = config.embedded_roles
        width = config.obs_dim + sum(getattr(config, f"dim_{r}") for r in self.roles)
        self.obs = nn.Embedding(2, config.obs_dim)
        self.mlp = MLP((width + config.dim_f, *config.embed_hidden, config.dim))
        self.norm = nn.LayerNorm(config.dim, eps=config.ln_eps)

    def _tokens(self, batch: Batch, which: str, observed: bool, f: Tensor) -> Tensor:
        B, L = f.shape[:2]
        flag = torch.full((B, L), int(observed), dtype=torch.long, device=f.device)
        parts = [self.obs(flag).to(f.dtype)]
        parts += [getattr(batch, f"{r}_{which}") for r in self.roles]
        return torch.cat([*parts, f], dim=-1)

    def forward(self, batch: Batch) -> Tensor:
        """Tokens ``[B, Lc + Lt, E]``: context slots first, then test points."""
        f_ctx = batch.f_ctx
        test_ref = batch.f_ctx.new_zeros(batch.batch_size, batch.n_test, f_ctx.shape[-1])
        ctx = self._tokens(batch, "ctx", True, f_ctx)
        test = self._tokens(batch, "test", False, test_ref)
        return self.norm(self.mlp(torch.cat([ctx, test], dim=1)))
