"""The Biased Scan Attention Transformer Neural Process (BSA-TNP)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from bsatnp.batch import Batch
from bsatnp.models.blocks import KRBlock
from bsatnp.models.config import BSATNPConfig
from bsatnp.models.embedding import TokenEmbedding
from bsatnp.models.heads import CategoricalHead, GaussianHead
from bsatnp.models.layers import reference_init_


class BSATNP(nn.Module):
    """BSA-TNP: token embedding → KRBlocks with biased attention → likelihood head.

    Locations and times enter (by default) only through attention biases computed from
    pairwise distances, so predictions are invariant to translating them.

    Args:
        config: Model configuration (default: the paper's 2D-GP model, 475,770 parameters).
        **overrides: Fields of :class:`BSATNPConfig` to change, e.g. ``backend="tiled"``.

    Example:
        >>> model = BSATNP(dim_s=2)
        >>> dist = model(batch)          # torch.distributions.Normal, [B, Lt, Df]
        >>> dist.mean, dist.stddev
    """

    def __init__(self, config: BSATNPConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or BSATNPConfig()
        if overrides:
            config = BSATNPConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.embed = TokenEmbedding(config)
        self.blocks = nn.ModuleList(
            KRBlock(
                config.dim, config.qkv_dim, config.num_heads, config.ffn_dim,
                config.bias_specs, config.ln_eps, config.backend, config.tile_q, config.tile_k,
            )
            for _ in range(config.num_blocks)
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.ln_eps)
        head_dims = (config.dim, *config.head_hidden)
        if config.likelihood == "gaussian":
            self.head: nn.Module = GaussianHead((*head_dims, 2 * config.dim_f), config.min_std)
        else:
            self.head = CategoricalHead((*head_dims, config.dim_f))
        reference_init_(self)

    def check_batch(self, batch: Batch) -> None:
        """Raise ``ValueError`` if ``batch`` does not fit this model (shapes, roles, values)."""
        if not isinstance(batch, Batch):
            raise ValueError(f"batch must be a bsatnp.Batch, got {type(batch).__name__}")
        batch.validate(required_roles=self.config.roles)
        for role in (*self.config.roles, "f"):
            want = getattr(self.config, f"dim_{role}")
            got = batch.f_ctx.shape[-1] if role == "f" else batch.ctx(role).shape[-1]
            if got != want:
                raise ValueError(
                    f"{role}_ctx has {got} features but the model was built with dim_{role}={want}"
                )

    def forward(self, batch: Batch) -> Distribution:
        """Predictive distribution at the test points.

        Args:
            batch: Context ``(x, s, t, f, mask_ctx)`` and test ``(x, s, t)`` inputs.

        Returns:
            ``Normal`` with mean/stddev ``[B, Lt, Df]`` (Gaussian likelihood) or
            ``Categorical`` with logits ``[B, Lt, C]``.
        """
        self.check_batch(batch)
        batch = batch.sanitized()
        n_ctx = batch.n_ctx
        mask_ctx = batch.context_mask()
        coords = {
            spec.role: torch.cat([batch.ctx(spec.role), batch.test(spec.role)], dim=1)
            for spec in self.config.bias_specs
        }
        z = self.embed(batch)
        for block in self.blocks:
            z = block(z, n_ctx, coords, mask_ctx)
        return self.head(self.norm(z[:, n_ctx:]))

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Predictive mean and standard deviation ``[B, Lt, Df]`` without gradients."""
        dist = self(batch)
        return dist.mean, dist.stddev
