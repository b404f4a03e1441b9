"""The Biased Scan Attention Transformer Neural Process (BSA-TNP)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

from bsatnp.batch import Batch
from bsatnp.models.base import NeuralProcess, register_family
from bsatnp.models.blocks import KRBlock
from bsatnp.models.config import BSATNPConfig
from bsatnp.models.embedding import TokenEmbedding
from bsatnp.models.heads import likelihood_head
from bsatnp.models.layers import reference_init_


@register_family("bsatnp")
class BSATNP(NeuralProcess):
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

    config_class = BSATNPConfig

    def __init__(self, config: BSATNPConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        config = self.config
        self.embed = TokenEmbedding(
            {r: config.width(r) for r in config.embedded_roles}, config.value_inputs,
            config.obs_dim, config.embed_hidden, config.dim, config.ln_eps,
        )
        self.blocks = nn.ModuleList(
            KRBlock(
                config.dim, config.qkv_dim, config.num_heads, config.ffn_dim,
                config.bias_specs, config.ln_eps, config.backend, config.tile_q, config.tile_k,
            )
            for _ in range(config.num_blocks)
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.head = likelihood_head(config.likelihood, (config.dim, *config.head_hidden),
                                    config.dim_f, config.min_std)
        reference_init_(self)

    @property
    def translation_invariant_roles(self) -> tuple[str, ...]:
        """Roles used only as biases of Euclidean or |Δt| distances."""
        config = self.config
        return tuple(spec.role for spec in config.bias_specs
                     if config.use(spec.role) == "bias"
                     and spec.distance in ("euclidean", "abs"))

    def check_batch(self, batch: Batch) -> None:
        """The base checks, and latitudes within ±90° for great-circle biases."""
        super().check_batch(batch)
        for spec in self.config.bias_specs:
            if not spec.distance.startswith("great_circle"):
                continue
            for part, mask in (("ctx", batch.context_mask()), ("test", None)):
                lat = getattr(batch, f"{spec.role}_{part}")[..., 1]
                bad = lat.abs() > 90
                if mask is not None:
                    bad = bad & mask
                if bool(bad.any()):
                    index = bad.nonzero()[0].tolist()
                    raise ValueError(f"{spec.role}_{part}: latitude {float(lat[tuple(index)]):g}° "
                                     f"at [b, i] = {index} is outside [-90, 90]; "
                                     f"{spec.role} must be (lon, lat) in degrees")

    def predictive(self, batch: Batch) -> Distribution:
        """``Normal`` ``[B, Lt, Df]`` or ``Categorical`` ``[B, Lt, C]`` at the test points."""
        return self.decode(self.encode(batch), batch)

    def encode(self, batch: Batch) -> list[Tensor]:
        """The context stream: context tokens at the input of each block ``[B, Lc, E]``."""
        mask_ctx = batch.context_mask()
        coords = {spec.role: batch.ctx(spec.role) for spec in self.config.bias_specs}
        z = self.embed.context(batch)
        states = []
        for block in self.blocks:
            states.append(z)
            z = block.attend(z, z, coords, coords, mask_ctx)
        return states

    def decode(self, encoded: list[Tensor], batch: Batch) -> Distribution:
        """The test stream: test tokens attend, block by block, to the encoded context."""
        mask_ctx = batch.context_mask()
        coords_ctx = {spec.role: batch.ctx(spec.role) for spec in self.config.bias_specs}
        coords = {spec.role: batch.test(spec.role) for spec in self.config.bias_specs}
        z = self.embed.test(batch)
        for block, z_ctx in zip(self.blocks, encoded):
            z = block.attend(z, z_ctx, coords, coords_ctx, mask_ctx)
        return self.head(self.norm(z), batch.offset_test)
