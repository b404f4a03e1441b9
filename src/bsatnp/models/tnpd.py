"""TNP-D (Nguyen & Grover, 2022) as the paper runs it (PROTOCOLS §9).

Every role is in the token — ``[x, s, t, f]`` with ``f = 0`` for test points and no
observed flag — embedded by a ReLU MLP, then post-norm transformer encoder blocks in which
every token attends to the context tokens (the paper's implementation attends to all
tokens with the test tokens masked as keys, which gives the same outputs: masked =
dropped; ``keys="all_masked"`` computes it that way for cost comparisons), no final
LayerNorm, and a ReLU head. Locations in the token make it *not* invariant to
translation: the baseline the attention biases of BSA-TNP are measured against.

A KRBlock model with locations embedded and no bias (the reference's SA-TNP) is a
BSA-TNP with ``use_s="embed"``; it is not this model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from bsatnp.attention.functional import Backend
from bsatnp.attention.mha import BiasedMultiheadAttention
from bsatnp.batch import ROLES, Batch
from bsatnp.config import check_literals
from bsatnp.models.base import FamilyConfig, NeuralProcess, register_family
from bsatnp.models.heads import Likelihood, likelihood_head
from bsatnp.models.layers import MLP, reference_init_

Norm = Literal["post", "pre"]
Keys = Literal["context", "all_masked"]


@dataclass(frozen=True)
class TNPDConfig(FamilyConfig):
    """Everything needed to rebuild a TNP-D (defaults: the paper's 2D GP, 474,754 parameters).

    Attributes:
        dim_x: Covariate features ``Dx`` (0: no ``x`` role).
        dim_s: Location features ``Ds`` (0: no ``s`` role).
        dim_t: Time features ``Dt`` (0: no ``t`` role).
        dim_f: Value features ``Df``.
        dim: Token width ``E``.
        num_blocks: Number of transformer blocks.
        num_heads: Attention heads.
        qkv_dim: Query/key/value width.
        ffn_dim: FFN hidden width.
        embed_hidden: Hidden widths of the token MLP (ReLU).
        head_hidden: Hidden widths of the output MLP (ReLU).
        norm: ``"post"`` (the paper's 2D GP) or ``"pre"`` (its Beijing and Gneiting runs).
        likelihood: Any of :data:`~bsatnp.likelihoods.LIKELIHOODS` (``categorical``:
            ``dim_f`` classes).
        min_std: Gaussian lower bound on σ.
        ln_eps: LayerNorm epsilon.
        backend: Attention backend (``auto``, ``dense``, ``tiled``, ``flex``).
        keys: ``"context"`` (attend to the context tokens) or ``"all_masked"`` (attend to
            all tokens with the test tokens masked: the same outputs at the cost of the test
            × test pairs; use ``backend="dense"``, which does not drop masked keys).
    """

    dim_x: int = 0
    dim_s: int = 2
    dim_t: int = 0
    dim_f: int = 1
    dim: int = 64
    num_blocks: int = 6
    num_heads: int = 4
    qkv_dim: int = 128
    ffn_dim: int = 256
    embed_hidden: tuple[int, ...] = (256, 128)
    head_hidden: tuple[int, ...] = (256, 64)
    norm: Norm = "post"
    likelihood: Likelihood = "gaussian"
    min_std: float = 0.0
    ln_eps: float = 1e-6
    backend: Backend = "auto"
    keys: Keys = "context"

    def __post_init__(self) -> None:
        check_literals(self)
        if min(self.dim_x, self.dim_s, self.dim_t) < 0 or self.dim_f < 1:
            raise ValueError("role widths must be >= 0 and dim_f >= 1")
        if not 0.0 <= self.min_std < 1.0:
            raise ValueError(f"min_std must be in [0, 1), got {self.min_std}")

    @property
    def memory_widths(self) -> tuple[int, ...]:
        """Token, attention and MLP widths (see :attr:`FamilyConfig.memory_widths`)."""
        return (self.dim, self.qkv_dim, self.ffn_dim, *self.embed_hidden, *self.head_hidden)


class EncoderBlock(nn.Module):
    """Transformer encoder block, post-norm (``LN(z + MHA(z))``) or pre-norm, ReLU FFN.

    Args:
        config: The model's configuration (widths, heads, norm placement, backend).
    """

    def __init__(self, config: TNPDConfig) -> None:
        super().__init__()
        self.post = config.norm == "post"
        self.attn = BiasedMultiheadAttention(config.dim, config.qkv_dim, config.num_heads, (),
                                             config.backend)
        self.norm1 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.ffn = MLP((config.dim, config.ffn_dim, config.dim), activation="relu")

    def forward(self, z: Tensor, n_keys: int, key_mask: Tensor) -> Tensor:
        """Update tokens ``z [B, L, E]``; the first ``n_keys`` are the keys (``key_mask``)."""
        if self.post:
            z = self.norm1(z + self.attn(z, z[:, :n_keys], {}, {}, key_mask))
            return self.norm2(z + self.ffn(z))
        zn = self.norm1(z)
        z = z + self.attn(zn, zn[:, :n_keys], {}, {}, key_mask)
        return z + self.ffn(self.norm2(z))


@register_family("tnpd")
class TNPD(NeuralProcess):
    """The paper's TNP-D: ``[x, s, t, f]`` tokens → encoder blocks → likelihood head.

    Args:
        config: Model configuration (default: the paper's 2D-GP TNP-D).
        **overrides: Fields of :class:`TNPDConfig` to change, e.g. ``norm="pre"``.

    Example:
        >>> model = TNPD(num_blocks=2)
        >>> dist = model(batch)          # torch.distributions.Normal, [B, Lt, Df]
    """

    config_class = TNPDConfig

    def __init__(self, config: TNPDConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        config = self.config
        width = sum(config.width(r) for r in ROLES) + config.value_inputs
        self.embed = MLP((width, *config.embed_hidden, config.dim), activation="relu")
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_blocks))
        self.head = likelihood_head(config.likelihood, (config.dim, *config.head_hidden),
                                    config.dim_f, config.min_std, activation="relu")
        reference_init_(self)

    def predictive(self, batch: Batch) -> Distribution:
        """``Normal`` ``[B, Lt, Df]`` or ``Categorical`` ``[B, Lt, C]`` at the test points."""
        n_ctx, mask_ctx = batch.n_ctx, batch.context_mask()
        f_test = batch.f_ctx.new_zeros(batch.batch_size, batch.n_test, batch.f_ctx.shape[-1])
        tokens = torch.cat([
            torch.cat([*(batch.ctx(r) for r in self.roles), batch.f_ctx], dim=-1),
            torch.cat([*(batch.test(r) for r in self.roles), f_test], dim=-1),
        ], dim=1)
        z = self.embed(tokens)  # [B, Lc + Lt, E]
        n_keys, key_mask = n_ctx, mask_ctx
        if self.config.keys == "all_masked":  # test tokens are keys too, all masked
            n_keys = z.shape[1]
            key_mask = torch.cat([mask_ctx, mask_ctx.new_zeros(mask_ctx.shape[0], batch.n_test)],
                                 dim=1)
        for block in self.blocks:
            z = block(z, n_keys, key_mask)
        return self.head(z[:, n_ctx:], batch.offset_test)
