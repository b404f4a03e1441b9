"""Configuration of a BSA-TNP model: plain data, serialisable to JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from bsatnp.attention.biases import BiasSpec
from bsatnp.attention.functional import Backend
from bsatnp.batch import ROLES
from bsatnp.config import check_literals
from bsatnp.models.base import FamilyConfig
from bsatnp.models.heads import Likelihood

RoleUse = Literal["embed", "bias", "both"]
ROLE_USES: tuple[str, ...] = get_args(RoleUse)


@dataclass(frozen=True)
class BSATNPConfig(FamilyConfig):
    """Everything needed to rebuild a BSA-TNP (defaults: the paper's 2D-GP model).

    Attributes:
        dim_x: Fixed-effect features ``Dx`` (0: no ``x`` role).
        dim_s: Location features ``Ds`` (0: no ``s`` role).
        dim_t: Time features ``Dt`` (0: no ``t`` role).
        dim_f: Value features ``Df`` (classes ``C`` for the categorical likelihood).
        use_x: How ``x`` enters: ``embed`` (in the token), ``bias`` or ``both``.
        use_s: How ``s`` enters (default ``bias``: translation invariant).
        use_t: How ``t`` enters (default ``bias``).
        bias_x: Bias of the ``x`` role when it is used as a bias.
        bias_s: Bias of the ``s`` role (RBF network, 5 basis functions).
        bias_t: Bias of the ``t`` role (RBF network on |Δt|, 3 basis functions).
        obs_dim: Width of the observed-flag embedding.
        embed_hidden: Hidden widths of the token MLP.
        dim: Token width ``E``.
        num_blocks: Number of KRBlocks.
        num_heads: Attention heads.
        qkv_dim: Query/key/value width.
        ffn_dim: FFN hidden width.
        head_hidden: Hidden widths of the output MLP.
        likelihood: Any of :data:`~bsatnp.likelihoods.LIKELIHOODS`.
        min_std: Gaussian lower bound on σ.
        ln_eps: LayerNorm epsilon.
        backend: Attention backend (``auto``, ``dense``, ``tiled``, ``flex``).
        tile_q: Queries per tile (``None``: automatic).
        tile_k: Keys per tile (``None``: 1024).
    """

    dim_x: int = 0
    dim_s: int = 2
    dim_t: int = 0
    dim_f: int = 1
    use_x: RoleUse = "embed"
    use_s: RoleUse = "bias"
    use_t: RoleUse = "bias"
    bias_x: BiasSpec = field(default_factory=lambda: BiasSpec(role="x"))
    bias_s: BiasSpec = field(default_factory=lambda: BiasSpec(role="s"))
    bias_t: BiasSpec = field(
        default_factory=lambda: BiasSpec(role="t", distance="abs", num_basis=3)
    )
    obs_dim: int = 4
    embed_hidden: tuple[int, ...] = (256, 128)
    dim: int = 64
    num_blocks: int = 6
    num_heads: int = 4
    qkv_dim: int = 128
    ffn_dim: int = 256
    head_hidden: tuple[int, ...] = (256, 64)
    likelihood: Likelihood = "gaussian"
    min_std: float = 0.0
    ln_eps: float = 1e-6
    backend: Backend = "auto"
    tile_q: int | None = None
    tile_k: int | None = None

    def __post_init__(self) -> None:
        check_literals(self)
        for role in ROLES:
            if getattr(self, f"bias_{role}").role != role:
                raise ValueError(f"bias_{role}.role must be {role!r}")
            if getattr(self, f"dim_{role}") < 0:
                raise ValueError(f"dim_{role} must be >= 0")
        if self.dim_f < 1:
            raise ValueError(f"dim_f must be >= 1, got {self.dim_f}")
        for name in ("dim", "num_blocks", "num_heads", "qkv_dim", "ffn_dim", "obs_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.qkv_dim % self.num_heads:
            raise ValueError(f"qkv_dim={self.qkv_dim} is not divisible by "
                             f"num_heads={self.num_heads}")
        for name in ("embed_hidden", "head_hidden"):
            if any(width < 1 for width in getattr(self, name)):
                raise ValueError(f"{name} widths must be >= 1, got {getattr(self, name)}")
        for name in ("tile_q", "tile_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if not self.min_std >= 0.0:
            raise ValueError(f"min_std must be >= 0, got {self.min_std}")
        for spec in self.bias_specs:
            width = self.width(spec.role)
            if spec.distance.startswith("great_circle") and width != 2:
                raise ValueError(f"bias_{spec.role} uses {spec.distance} on (lon, lat), which "
                                 f"needs dim_{spec.role}=2, got {width}")
        if not 0.0 <= self.min_std < 1.0:
            raise ValueError(f"min_std must be in [0, 1), got {self.min_std}")

    def use(self, role: str) -> str:
        """How ``role`` enters the model: ``embed``, ``bias`` or ``both``."""
        return str(getattr(self, f"use_{role}"))

    @property
    def great_circle(self) -> bool:
        """Whether ``s`` enters a bias of great-circle distance."""
        return self.use("s") in ("bias", "both") and self.bias_s.distance.startswith(
            "great_circle")

    @property
    def memory_widths(self) -> tuple[int, ...]:
        """Token, attention and MLP widths (see :attr:`FamilyConfig.memory_widths`)."""
        return (self.dim, self.qkv_dim, self.ffn_dim, *self.embed_hidden, *self.head_hidden)

    @property
    def embedded_roles(self) -> tuple[str, ...]:
        """Roles that enter the token, in token order."""
        return tuple(r for r in self.roles if self.use(r) in ("embed", "both"))

    @property
    def bias_specs(self) -> tuple[BiasSpec, ...]:
        """Biases of the roles that enter the attention scores."""
        return tuple(
            getattr(self, f"bias_{r}")
            for r in self.roles
            if self.use(r) in ("bias", "both")
        )
