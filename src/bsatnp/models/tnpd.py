"""TNP-D (Nguyen & Grover, 2022): the transformer neural process without attention biases.

Locations enter the token instead of an attention bias, so the model is *not* invariant
to translating them — the ablation that isolates what the biases of the BSA-TNP buy.
The blocks are BSA-TNP's :class:`~bsatnp.models.blocks.KRBlock` with no bias (separate
weights per block, context → context and test → context attention, padding masked as
keys), sized like the paper's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Normal

from bsatnp.attention.functional import BACKENDS
from bsatnp.batch import Batch
from bsatnp.config import Config
from bsatnp.models.base import NeuralProcess
from bsatnp.models.blocks import KRBlock
from bsatnp.models.embedding import TokenEmbedding
from bsatnp.models.heads import GaussianHead
from bsatnp.models.layers import reference_init_


@dataclass(frozen=True)
class TNPDConfig(Config):
    """Everything needed to rebuild a TNP-D (defaults: sized like the 2D-GP BSA-TNP).

    Attributes:
        dim_s: Location features ``Ds`` (embedded in the token).
        dim_f: Value features ``Df``.
        obs_dim: Width of the observed-flag embedding.
        dim: Token width ``E``.
        num_blocks: Number of transformer blocks.
        num_heads: Attention heads.
        qkv_dim: Query/key/value width.
        ffn_dim: FFN hidden width.
        embed_hidden: Hidden widths of the token MLP.
        head_hidden: Hidden widths of the output MLP.
        min_std: Gaussian lower bound on σ.
        ln_eps: LayerNorm epsilon.
        backend: Attention backend (``auto``, ``dense``, ``tiled``, ``flex``).
        keys: ``"context"`` (default): every token attends to the context tokens only.
            ``"all_masked"``: the usual TNP-D implementation, attention over all
            ``Lc + Lt`` tokens with the test tokens masked as keys; the same predictions
            (masked = dropped) at the cost of the test × test pairs, for cost comparisons
            with the paper's TNP-D (use ``backend="dense"``, which does not drop masked keys).
    """

    dim_s: int = 2
    dim_f: int = 1
    obs_dim: int = 4
    dim: int = 64
    num_blocks: int = 6
    num_heads: int = 4
    qkv_dim: int = 128
    ffn_dim: int = 256
    embed_hidden: tuple[int, ...] = (256, 128)
    head_hidden: tuple[int, ...] = (256, 64)
    min_std: float = 0.0
    ln_eps: float = 1e-6
    backend: str = "auto"
    keys: str = "context"

    def __post_init__(self) -> None:
        if self.dim_s < 1:
            raise ValueError(f"dim_s must be >= 1 (TNP-D embeds locations), got {self.dim_s}")
        if self.dim_f < 1:
            raise ValueError(f"dim_f must be >= 1, got {self.dim_f}")
        if not 0.0 <= self.min_std < 1.0:
            raise ValueError(f"min_std must be in [0, 1), got {self.min_std}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.keys not in ("context", "all_masked"):
            raise ValueError(f"keys must be 'context' or 'all_masked', got {self.keys!r}")


class TNPD(NeuralProcess):
    """TNP-D: ``[flag, s, f]`` tokens → plain pre-norm transformer → Gaussian head.

    Context tokens read ``(flag=1, s, f)``, test tokens ``(flag=0, s, 0)``. Every block
    lets context attend to context and test attend to context only.

    Args:
        config: Model configuration (default: 476,042 parameters).
        **overrides: Fields of :class:`TNPDConfig` to change, e.g. ``backend="dense"``.

    Example:
        >>> model = TNPD(num_blocks=2)
        >>> dist = model(batch)          # torch.distributions.Normal, [B, Lt, Df]
    """

    config_class = TNPDConfig

    def __init__(self, config: TNPDConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        config = self.config
        self.embed = TokenEmbedding({"s": config.dim_s}, config.dim_f, config.obs_dim,
                                    config.embed_hidden, config.dim, config.ln_eps)
        self.blocks = nn.ModuleList(
            KRBlock(
                config.dim, config.qkv_dim, config.num_heads, config.ffn_dim,
                bias_specs=(), ln_eps=config.ln_eps, backend=config.backend,
            )
            for _ in range(config.num_blocks)
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.head = GaussianHead((config.dim, *config.head_hidden, 2 * config.dim_f),
                                 config.min_std)
        reference_init_(self)

    def predictive(self, batch: Batch) -> Normal:
        """``Normal`` with mean/stddev ``[B, Lt, Df]`` from context ``(s, f)``, test ``s``."""
        n_ctx, mask_ctx = batch.n_ctx, batch.context_mask()
        z = self.embed(batch)  # [B, Lc + Lt, E]
        n_keys, key_mask = n_ctx, mask_ctx
        if self.config.keys == "all_masked":  # test tokens are keys too, all masked
            n_keys = z.shape[1]
            key_mask = torch.cat([mask_ctx, mask_ctx.new_zeros(mask_ctx.shape[0], batch.n_test)], 1)
        for block in self.blocks:
            z = block(z, n_keys, {}, key_mask)
        return self.head(self.norm(z[:, n_ctx:]))
