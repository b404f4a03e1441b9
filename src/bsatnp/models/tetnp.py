"""TE-TNP (Ashman et al., 2024): translation-equivariant transformer neural process.

Tokens never contain a location. Locations enter only through translation-equivariant
multi-head attention (:class:`TEMultiheadAttention`), whose logits are a small MLP ``φ``
of the per-head dot products and the location difference ``s_q − s_k``, so the predictive
distribution is unchanged when every location is shifted by the same vector.

The default is the pseudo-token (induced set transformer) variant, TE-PT-TNP: ``M`` learned
pseudo-tokens summarise the context in every layer, and context and test tokens read from
them. Pseudo-token locations are the mean of the valid context locations of each task
plus learned offsets, which keeps them translation equivariant. All locations are centred
on that mean before use, so absolute coordinates of any size lose no precision. With
``num_pseudo = 0`` there are none: the context attends to itself and the test points to
the context (the "vanilla" TE-TNP, quadratic in the context).

The "location" of a point is every role in ``equivariant`` side by side (``s`` by default;
the paper treats ``x``, ``s`` and ``t`` all so), the token embeds the other roles and the
value. The paper's configuration (Ashman et al. 2024 as the BSA-TNP paper runs it: 5
layers, width 128, 8 heads, a kernel MLP ``[128, 128, 8]``, test tokens with blocks of
their own) is ``configs/gp2d_tetnp_paper.yaml`` (1.84 M parameters with 128
pseudo-tokens, as the reference package builds it; 32 in ``gp2d_tetnp_paper32.yaml``;
none in ``gp2d_tetnp_vanilla.yaml``).

Memory: ``φ`` runs on every (query, key) pair, so one TE-MHA call holds a few float32
tensors of ``B·Lq·Lk·phi_hidden`` elements (4 bytes each; training keeps about three of
them for the backward pass). With ``phi_hidden = 16`` and ``B = 8``:

* ``Lq × Lk = 512 × 1024``: 2**26 elements, 256 MiB per tensor;
* ``Lq × Lk = 2048 × 4096``: 2**30 elements, 4 GiB per tensor — refused by the default
  guard ``max_pair_elements = 2**28`` (1 GiB per tensor), which raises ``ValueError``
  instead of running out of memory.

Inside TE-TNP one side of every attention is the ``M`` pseudo-tokens, so the cost is
linear in the number of points: with ``M = 32`` the default guard allows
``B·(Lc + Lt) ≤ 2**28 / (32·16) = 524,288`` points per batch (e.g. 65,536 per task at
``B = 8``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from bsatnp.batch import Batch
from bsatnp.config import check_literals
from bsatnp.models.base import FamilyConfig, NeuralProcess, register_family
from bsatnp.models.embedding import TokenEmbedding
from bsatnp.models.heads import Likelihood, likelihood_head
from bsatnp.models.layers import MLP, reference_init_

DEFAULT_MAX_PAIR_ELEMENTS = 2**28
"""Default limit on ``B·Lq·Lk·phi_hidden`` for one TE-MHA call (1 GiB per float32 tensor)."""


class TEMultiheadAttention(nn.Module):
    """Translation-equivariant multi-head attention.

    For head ``h`` the dot product ``a_h = (W_q z_q)_h · (W_k z_k)_h / √d`` is combined
    with the location difference into the logits ``φ([a_1, ..., a_H, s_q − s_k])``, where
    ``φ`` is an MLP ``H + Ds → phi_hidden (× phi_layers) → H`` applied to every (query,
    key) pair. The output is ``W_o`` of the per-head softmax-weighted values ``W_v z_k``.

    Args:
        dim: Token width ``E`` (input and output).
        dim_s: Location features ``Ds``.
        qkv_dim: Width of the query/key/value projections (split over heads).
        num_heads: Number of heads ``H``.
        phi_hidden: Hidden width of ``φ``.
        max_pair_elements: Largest allowed ``B·Lq·Lk·phi_hidden``; larger calls raise
            ``ValueError`` (see the module docstring for the memory this stands for).
        phi_layers: Hidden layers of ``φ``.
        activation: Of ``φ``'s hidden layers, ``"gelu"`` or ``"relu"`` (the reference's).
    """

    def __init__(
        self,
        dim: int = 64,
        dim_s: int = 2,
        qkv_dim: int = 128,
        num_heads: int = 4,
        phi_hidden: int = 16,
        max_pair_elements: int = DEFAULT_MAX_PAIR_ELEMENTS,
        phi_layers: int = 1,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if qkv_dim % num_heads:
            raise ValueError(f"qkv_dim={qkv_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = qkv_dim // num_heads
        self.phi_hidden = phi_hidden
        self.max_pair_elements = max_pair_elements
        self.proj_q = nn.Linear(dim, qkv_dim)
        self.proj_k = nn.Linear(dim, qkv_dim)
        self.proj_v = nn.Linear(dim, qkv_dim)
        self.proj_out = nn.Linear(qkv_dim, dim)
        self.phi = MLP((num_heads + dim_s, *[phi_hidden] * phi_layers, num_heads),
                       activation=activation)

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, L, H·Dh]`` → ``[B, L, H, Dh]``."""
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim)

    def forward(
        self,
        z_q: Tensor,
        z_k: Tensor,
        s_q: Tensor,
        s_k: Tensor,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``z_q [B, Lq, E]`` at ``s_q`` to ``z_k [B, Lk, E]`` at ``s_k``.

        Args:
            z_q: Query tokens ``[B, Lq, E]``.
            z_k: Key/value tokens ``[B, Lk, E]``.
            s_q: Query locations ``[B, Lq, Ds]``.
            s_k: Key locations ``[B, Lk, Ds]``.
            key_mask: Valid keys ``[B, Lk]`` (bool) or ``None`` (all valid). A query with
                no valid key gets the output projection of zero (finite).

        Returns:
            Updated queries ``[B, Lq, E]``.

        Raises:
            ValueError: If ``B·Lq·Lk·phi_hidden`` exceeds ``max_pair_elements``.
        """
        B, Lq, _ = z_q.shape
        Lk = z_k.shape[1]
        pairs = B * Lq * Lk * self.phi_hidden
        if pairs > self.max_pair_elements:
            raise ValueError(
                f"TE attention over B·Lq·Lk·phi_hidden = {B}·{Lq}·{Lk}·{self.phi_hidden} = "
                f"{pairs:,} pair elements exceeds max_pair_elements={self.max_pair_elements:,} "
                f"(~{4 * pairs / 2**30:.1f} GiB per float32 tensor); use smaller batches or "
                "raise max_pair_elements"
            )
        q, k, v = self._heads(self.proj_q(z_q)), self._heads(self.proj_k(z_k)), self._heads(
            self.proj_v(z_k)
        )
        dots = torch.einsum("bqhd,bkhd->bqkh", q, k) / math.sqrt(self.head_dim)
        diff = s_q[:, :, None, :] - s_k[:, None, :, :]  # [B, Lq, Lk, Ds]
        logits = self.phi(torch.cat([dots, diff.to(dots.dtype)], dim=-1))  # [B, Lq, Lk, H]
        if key_mask is not None:
            valid = key_mask[:, None, :, None]  # [B, 1, Lk, 1]
            logits = logits.masked_fill(~valid, float("-inf"))
            logits = logits.masked_fill(~valid.any(dim=2, keepdim=True), 0.0)  # no valid key
            weights = logits.softmax(dim=2).masked_fill(~valid, 0.0)
        else:
            weights = logits.softmax(dim=2)
        out = torch.einsum("bqkh,bkhd->bqhd", weights, v)
        return self.proj_out(out.reshape(B, Lq, self.num_heads * self.head_dim))


class TEISTLayer(nn.Module):
    """One pre-norm layer with TE attention: through pseudo-tokens, or over the context.

    With pseudo-tokens ``u`` at ``s_u`` and point tokens ``z = [context; test]`` at
    ``s_z``::

        u = u + TE-MHA₁(LN(u) → LN(z)[:, :Lc])     # valid context keys only
        u = u + FFN₁(LN(u))
        z = z + TE-MHA₂(LN(z) → LN(u))             # context and test read the pseudo-tokens
        z = z + FFN₂(LN(z))

    Without pseudo-tokens (``pseudo=False``) the keys of the second step are the valid
    context tokens ``LN(z)[:, :Lc]`` themselves. With ``separate_test`` the test tokens
    read the keys through a TE-MHA, FFN and norms of their own (the paper's three blocks
    per layer); otherwise context and test tokens share them. Either way test tokens never
    influence the pseudo-tokens, the context or each other.

    Args:
        dim: Token width ``E``.
        dim_s: Location features ``Ds``.
        qkv_dim: Query/key/value width.
        num_heads: Attention heads.
        ffn_dim: Hidden width of the FFNs.
        phi_hidden: Hidden width of the logit MLPs ``φ``.
        ln_eps: LayerNorm epsilon.
        max_pair_elements: Guard of each TE-MHA (see :class:`TEMultiheadAttention`).
        phi_layers: Hidden layers of each ``φ``.
        pseudo: Whether the layer has pseudo-tokens.
        separate_test: Whether test tokens have blocks of their own.
        activation: Of the hidden layers of every ``φ`` and FFN.
    """

    def __init__(
        self,
        dim: int,
        dim_s: int,
        qkv_dim: int,
        num_heads: int,
        ffn_dim: int,
        phi_hidden: int,
        ln_eps: float = 1e-6,
        max_pair_elements: int = DEFAULT_MAX_PAIR_ELEMENTS,
        phi_layers: int = 1,
        pseudo: bool = True,
        separate_test: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        attn = (dim, dim_s, qkv_dim, num_heads, phi_hidden, max_pair_elements, phi_layers,
                activation)
        self.pseudo, self.separate_test = pseudo, separate_test
        if pseudo:  # registration order kept: it is the order of initialisation
            self.norm_u_attn = nn.LayerNorm(dim, eps=ln_eps)
        self.norm_z_attn = nn.LayerNorm(dim, eps=ln_eps)
        if pseudo:
            self.attn_u = TEMultiheadAttention(*attn)
            self.norm_u_ffn = nn.LayerNorm(dim, eps=ln_eps)
            self.ffn_u = MLP((dim, ffn_dim, dim), activation=activation)
            self.norm_u_key = nn.LayerNorm(dim, eps=ln_eps)
        self.attn_z = TEMultiheadAttention(*attn)
        self.norm_z_ffn = nn.LayerNorm(dim, eps=ln_eps)
        self.ffn_z = MLP((dim, ffn_dim, dim), activation=activation)
        if separate_test:
            self.norm_t_attn = nn.LayerNorm(dim, eps=ln_eps)
            self.attn_t = TEMultiheadAttention(*attn)
            self.norm_t_ffn = nn.LayerNorm(dim, eps=ln_eps)
            self.ffn_t = MLP((dim, ffn_dim, dim), activation=activation)

    def forward(
        self, u: Tensor | None, z: Tensor, s_u: Tensor | None, s_z: Tensor, mask_ctx: Tensor
    ) -> tuple[Tensor | None, Tensor]:
        """Update pseudo-tokens and point tokens.

        Args:
            u: Pseudo-tokens ``[B, M, E]`` (``None`` without).
            z: Context tokens followed by test tokens ``[B, Lc + Lt, E]``.
            s_u: Pseudo-token locations ``[B, M, Ds]`` (``None`` without).
            s_z: Point locations ``[B, Lc + Lt, Ds]``.
            mask_ctx: Valid context slots ``[B, Lc]`` (bool).

        Returns:
            Updated ``(u [B, M, E] or None, z [B, Lc + Lt, E])``.
        """
        n_ctx = mask_ctx.shape[1]
        zn = self.norm_z_attn(z)
        if self.pseudo:
            u = u + self.attn_u(self.norm_u_attn(u), zn[:, :n_ctx], s_u, s_z[:, :n_ctx],
                                mask_ctx)
            u = u + self.ffn_u(self.norm_u_ffn(u))
            keys, s_keys, key_mask = self.norm_u_key(u), s_u, None
        else:
            keys, s_keys, key_mask = zn[:, :n_ctx], s_z[:, :n_ctx], mask_ctx
        if not self.separate_test:
            z = z + self.attn_z(zn, keys, s_z, s_keys, key_mask)
            return u, z + self.ffn_z(self.norm_z_ffn(z))
        ctx = z[:, :n_ctx] + self.attn_z(zn[:, :n_ctx], keys, s_z[:, :n_ctx], s_keys,
                                         key_mask)
        ctx = ctx + self.ffn_z(self.norm_z_ffn(ctx))
        test = z[:, n_ctx:] + self.attn_t(self.norm_t_attn(z[:, n_ctx:]), keys,
                                          s_z[:, n_ctx:], s_keys, key_mask)
        test = test + self.ffn_t(self.norm_t_ffn(test))
        return u, torch.cat([ctx, test], dim=1)


@dataclass(frozen=True)
class TETNPConfig(FamilyConfig):
    """Everything needed to rebuild a TE-TNP (defaults: 4 layers, 554,410 parameters for Ds=2).

    Attributes:
        dim_x: Covariate features ``Dx`` (0: no ``x`` role).
        dim_s: Location features ``Ds`` (used only through TE attention).
        dim_t: Time features ``Dt`` (0: no ``t`` role).
        dim_f: Value features ``Df``.
        obs_dim: Width of the observed-flag embedding.
        dim: Token width ``E``.
        num_layers: Number of :class:`TEISTLayer` layers.
        num_heads: Attention heads.
        qkv_dim: Query/key/value width.
        ffn_dim: FFN hidden width.
        phi_hidden: Hidden width of the per-pair logit MLP ``φ``.
        phi_layers: Hidden layers of ``φ`` (the paper's kernel MLP ``[128, 128, H]``: 2).
        num_pseudo: Number of pseudo-tokens ``M`` (0: none, the context attends to itself).
        separate_test: Test tokens read through attention and FFN blocks of their own
            (the paper's three blocks per layer) instead of sharing the context's.
        equivariant: Roles read as TE locations (their differences enter ``φ``; ``s``
            always); the other roles are embedded in the token. The paper: ``x, s, t``.
        embed_hidden: Hidden widths of the token MLP.
        head_hidden: Hidden widths of the output MLP.
        likelihood: Any of :data:`~bsatnp.likelihoods.LIKELIHOODS` (``categorical``:
            ``dim_f`` classes).
        min_std: Gaussian lower bound on σ.
        ln_eps: LayerNorm epsilon.
        max_pair_elements: Largest ``B·Lq·Lk·phi_hidden`` one TE-MHA call may use.
        activation: Of the hidden layers of ``φ`` and the FFNs. The reference's TE-TNP uses
            ReLU there; the bundled presets, the paper's included, keep GELU, as every other
            MLP of this package (their committed comparisons were trained with it).
    """

    dim_x: int = 0
    dim_s: int = 2
    dim_t: int = 0
    dim_f: int = 1
    obs_dim: int = 4
    dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    qkv_dim: int = 128
    ffn_dim: int = 256
    phi_hidden: int = 16
    phi_layers: int = 1
    num_pseudo: int = 32
    separate_test: bool = False
    equivariant: tuple[str, ...] = ("s",)
    embed_hidden: tuple[int, ...] = (128,)
    head_hidden: tuple[int, ...] = (128,)
    likelihood: Likelihood = "gaussian"
    min_std: float = 0.0
    ln_eps: float = 1e-6
    max_pair_elements: int = DEFAULT_MAX_PAIR_ELEMENTS
    activation: Literal["gelu", "relu"] = "gelu"

    def __post_init__(self) -> None:
        check_literals(self)
        for name in ("dim_s", "dim_f", "num_layers", "num_heads", "phi_hidden", "phi_layers",
                     "max_pair_elements"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_pseudo < 0:
            raise ValueError(f"num_pseudo must be >= 0 (0: none), got {self.num_pseudo}")
        if "s" not in self.equivariant or not set(self.equivariant) <= {"x", "s", "t"} or len(
                set(self.equivariant)) != len(self.equivariant):
            raise ValueError(f"equivariant must name distinct roles among x, s, t, s "
                             f"included, got {self.equivariant}")
        if min(self.dim_x, self.dim_t) < 0:
            raise ValueError(f"dim_x and dim_t must be >= 0, got {self.dim_x}, {self.dim_t}")
        if self.qkv_dim % self.num_heads:
            raise ValueError(
                f"qkv_dim={self.qkv_dim} is not divisible by num_heads={self.num_heads}"
            )
        if not 0.0 <= self.min_std < 1.0:
            raise ValueError(f"min_std must be in [0, 1), got {self.min_std}")

    @property
    def memory_widths(self) -> tuple[int, ...]:
        """Token, attention and MLP widths (see :attr:`FamilyConfig.memory_widths`)."""
        return (self.dim, self.qkv_dim, self.ffn_dim, *self.embed_hidden, *self.head_hidden)

    @property
    def located(self) -> tuple[str, ...]:
        """The roles read as TE locations, in ``x, s, t`` order (those the model reads)."""
        return tuple(r for r in ("x", "s", "t") if r in self.equivariant and self.width(r))


@register_family("tetnp")
class TETNP(NeuralProcess):
    """TE-TNP with pseudo-tokens: ``[flag, x, t, f]`` tokens → TE-IST layers → Gaussian head.

    Context tokens embed ``(flag=1, x, t, f)`` and test tokens ``(flag=0, x, t, 0)`` (``x``
    and ``t`` when the config has them); locations are never in a token. Every layer
    updates the pseudo-tokens from the valid context, then lets context and test tokens
    attend to the pseudo-tokens (:class:`TEISTLayer`); the final test tokens go through a
    LayerNorm and the Gaussian head. Pseudo-tokens sit at the mean valid context location
    plus learned offsets (initialised ``N(0, 0.1²)``), so padded slots influence nothing
    and the model is translation equivariant in ``s``.

    Args:
        config: Model configuration (default: 554,410 parameters).
        **overrides: Fields of :class:`TETNPConfig` to change, e.g. ``num_layers=2``.

    Example:
        >>> model = TETNP(num_layers=2)
        >>> dist = model(batch)          # torch.distributions.Normal, [B, Lt, Df]
    """

    config_class = TETNPConfig

    def __init__(self, config: TETNPConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        config = self.config
        # the located roles enter the kernel MLP instead
        tokens = {r: config.width(r) for r in ("x", "t")
                  if config.width(r) > 0 and r not in config.located}
        self.embed = TokenEmbedding(tokens, config.value_inputs, config.obs_dim,
                                    config.embed_hidden, config.dim, config.ln_eps)
        dim_loc = sum(config.width(r) for r in config.located)
        self.layers = nn.ModuleList(
            TEISTLayer(
                config.dim, dim_loc, config.qkv_dim, config.num_heads, config.ffn_dim,
                config.phi_hidden, config.ln_eps, config.max_pair_elements,
                config.phi_layers, config.num_pseudo > 0, config.separate_test,
                config.activation,
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.head = likelihood_head(config.likelihood, (config.dim, *config.head_hidden),
                                    config.dim_f, config.min_std)
        reference_init_(self)
        if config.num_pseudo:
            self.pseudo_tokens = nn.Parameter(torch.randn(config.num_pseudo, config.dim))
            self.pseudo_offsets = nn.Parameter(0.1 * torch.randn(config.num_pseudo, dim_loc))

    @property
    def translation_invariant_roles(self) -> tuple[str, ...]:
        """The roles read as TE locations (only their differences enter)."""
        return tuple(self.config.located)

    def predictive(self, batch: Batch) -> Distribution:
        """``Normal`` ``[B, Lt, Df]`` or ``Categorical`` ``[B, Lt, C]`` at the test points."""
        n_ctx, mask_ctx = batch.n_ctx, batch.context_mask()
        located = self.config.located
        s_ctx = torch.cat([batch.ctx(r) for r in located], dim=-1)
        s_test = torch.cat([batch.test(r) for r in located], dim=-1)
        weights = mask_ctx[..., None].to(s_ctx.dtype)  # [B, Lc, 1]
        centre = (s_ctx * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        s_z = torch.cat([s_ctx, s_test], dim=1) - centre  # [B, Lc + Lt, D]
        z = self.embed(batch)  # [B, Lc + Lt, E]
        B = z.shape[0]
        u = s_u = None
        if self.config.num_pseudo:
            u = self.pseudo_tokens.to(z.dtype).expand(B, -1, -1)  # [B, M, E]
            s_u = self.pseudo_offsets.to(s_z.dtype).expand(B, -1, -1)  # [B, M, D], centred
        for layer in self.layers:
            u, z = layer(u, z, s_u, s_z, mask_ctx)
        return self.head(self.norm(z[:, n_ctx:]), batch.offset_test)
