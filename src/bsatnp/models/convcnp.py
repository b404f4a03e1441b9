"""ConvCNP (Gordon et al., 2020): convolutional conditional neural process on 2D locations.

The context set is smoothed onto a regular grid by an RBF *SetConv* (a density channel
plus density-normalised value channels), processed by a UNet-style CNN and read back at
the test points by a second RBF SetConv followed by a pointwise Gaussian head.

Grid. With the default *adaptive* grid (``grid_bounds=None``) each task's grid origin is
the minimum, per axis, over its valid context and all its test locations, minus
``margin``; the spacing is fixed to ``1 / points_per_unit`` and every task of a batch gets
the same number of grid points per axis, ``ceil(extent · points_per_unit) + 1`` with
``extent = max − min + 2·margin`` taken as the largest over the batch (smaller tasks get
empty cells at the high end). The origin is not snapped to a lattice, so the grid moves
with the data and the model is translation equivariant: shifting every location of a
task leaves its predictions unchanged (up to float rounding). With fixed
``grid_bounds=(lo, hi)`` the grid covers ``[lo, hi]²`` for every batch; locations outside
it are predicted poorly (the decoder sees only RBF tails of the edge cells), so shifted or
scaled evaluations need bounds that cover the new domain.

Both SetConvs use an isotropic RBF ``φ(d) = exp(−|d|² / (2ℓ²))``, which factorises over
the axes, ``φ(g − s) = φ(gx − sx)·φ(gy − sy)``: :func:`set_conv_to_grid` builds
``[B, Lc, Nx]`` and ``[B, Lc, Ny]`` weights and contracts them with one batched matmul
instead of forming ``[B, Lc, Nx·Ny]`` weights, and :func:`set_conv_to_points` contracts
the grid one axis at a time (peak memory ``[B, Lt, C, Ny]``).
Distances are taken between coordinates relative to the grid origin. Padded context slots
carry zero weight, so masking a context point is exactly the same as dropping it. Only
the ``s`` and ``f`` roles are used; ``x`` and ``t`` are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from bsatnp.batch import Batch
from bsatnp.config import check_literals
from bsatnp.models.base import FamilyConfig, NeuralProcess, register_family
from bsatnp.models.heads import Likelihood, likelihood_head
from bsatnp.models.layers import reference_init_

_DENSITY_EPS = 1e-8
_CEIL_TOL = 1e-3  # grid points; keeps float rounding of a shifted extent from adding a point


@dataclass(frozen=True)
class ConvCNPConfig(FamilyConfig):
    """Everything needed to rebuild a ConvCNP (defaults: 596,100 parameters for ``Df = 1``).

    Attributes:
        dim_s: Location features ``Ds``; must be 2.
        dim_f: Value features ``Df``.
        points_per_unit: Grid density (grid points per unit of ``s``); spacing ``1/ppu``.
        margin: Padding added on every side of the data extent (units of ``s``, adaptive
            grid only).
        grid_bounds: ``(lo, hi)`` of a fixed grid ``[lo, hi]²``; ``None`` = adaptive grid.
        channels: Width ``C`` of every UNet level (or residual block) and of the decoded
            features.
        depth: Number of stride-2 down/up levels of the UNet.
        kernel_size: Odd convolution kernel size.
        net: The CNN on the grid: ``"unet"``, or ``"residual"``, the paper's stack of
            ``num_blocks`` depthwise-separable pre-activation residual blocks (batch norm,
            ReLU, a depthwise ``kernel_size²`` and a pointwise convolution, twice).
        num_blocks: Residual blocks of the ``"residual"`` net.
        head_hidden: Hidden widths of the pointwise output MLP.
        likelihood: Any of :data:`~bsatnp.likelihoods.LIKELIHOODS` (``categorical``:
            ``dim_f`` classes).
        min_std: Gaussian lower bound on σ.
        max_points_per_axis: Largest grid allowed per axis; a larger one raises
            ``ValueError`` (guards against locations on a much larger scale than ``ppu``).
    """

    dim_s: int = 2
    dim_f: int = 1
    points_per_unit: float = 16.0
    margin: float = 0.1
    grid_bounds: tuple[float, float] | None = None
    channels: int = 64
    depth: int = 4
    kernel_size: int = 3
    net: Literal["unet", "residual"] = "unet"
    num_blocks: int = 8
    head_hidden: tuple[int, ...] = (64,)
    likelihood: Likelihood = "gaussian"
    min_std: float = 0.0
    max_points_per_axis: int = 1024

    def __post_init__(self) -> None:
        check_literals(self)
        if self.dim_s != 2:
            raise ValueError(f"dim_s must be 2 (ConvCNP here is 2D only), got {self.dim_s}")
        if self.dim_f < 1:
            raise ValueError(f"dim_f must be >= 1, got {self.dim_f}")
        if not self.points_per_unit > 0:
            raise ValueError(f"points_per_unit must be > 0, got {self.points_per_unit}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.grid_bounds is not None and not (
            len(self.grid_bounds) == 2 and self.grid_bounds[0] < self.grid_bounds[1]
        ):
            raise ValueError(f"grid_bounds must be (lo, hi) with lo < hi, got {self.grid_bounds}")
        if self.channels < 1 or self.depth < 1:
            raise ValueError(
                f"channels and depth must be >= 1, got {self.channels}, {self.depth}"
            )
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if not 0.0 <= self.min_std < 1.0:
            raise ValueError(f"min_std must be in [0, 1), got {self.min_std}")
        if self.max_points_per_axis < 2:
            raise ValueError(
                f"max_points_per_axis must be >= 2, got {self.max_points_per_axis}"
            )

    @property
    def memory_widths(self) -> tuple[int, ...]:
        """The head MLP's widths (see :attr:`FamilyConfig.memory_widths`)."""
        return tuple(self.head_hidden)


def _rbf(rel: Tensor, n: int, spacing: float, lengthscale: Tensor) -> Tensor:
    """RBF weights between 1D coordinates and the grid points ``spacing · [0, n)``.

    Args:
        rel: Coordinates relative to the grid origin ``[B, L]``.
        n: Number of grid points.
        spacing: Grid spacing.
        lengthscale: Positive scalar lengthscale.

    Returns:
        ``exp(−(rel − g)² / (2ℓ²))`` of shape ``[B, L, n]``.
    """
    grid = spacing * torch.arange(n, device=rel.device, dtype=rel.dtype)
    return torch.exp(-0.5 * ((rel[..., None] - grid) / lengthscale) ** 2)


def set_conv_to_grid(
    rel: Tensor, f: Tensor, mask: Tensor, size: tuple[int, int], spacing: float,
    lengthscale: Tensor,
) -> Tensor:
    """Encoder SetConv: density and density-normalised value channels on the grid.

    ``h_density(g) = Σ_c m_c φ(g − s_c)`` and
    ``h_value(g) = Σ_c m_c φ(g − s_c) f_c / (h_density(g) + 1e-8)``, computed from the
    per-axis RBF factors with one batched contraction.

    Args:
        rel: Context locations relative to the grid origin ``[B, Lc, 2]``.
        f: Context values ``[B, Lc, Df]`` (finite everywhere).
        mask: Valid context slots ``[B, Lc]`` (bool); padding gets zero weight.
        size: Grid points per axis ``(Nx, Ny)``.
        spacing: Grid spacing.
        lengthscale: Positive scalar RBF lengthscale.

    Returns:
        ``[B, 1 + Df, Nx, Ny]``: the density channel, then the value channels.
    """
    phi_x = _rbf(rel[..., 0], size[0], spacing, lengthscale)  # [B, Lc, Nx]
    phi_y = _rbf(rel[..., 1], size[1], spacing, lengthscale)  # [B, Lc, Ny]
    m = mask[..., None].to(rel.dtype)  # [B, Lc, 1]
    weights = torch.cat([m, m * f], dim=-1)  # [B, Lc, 1 + Df]
    h = torch.einsum("bck,bcx,bcy->bkxy", weights, phi_x, phi_y)  # [B, 1 + Df, Nx, Ny]
    density = h[:, :1]
    return torch.cat([density, h[:, 1:] / (density + _DENSITY_EPS)], dim=1)


def set_conv_to_points(rel: Tensor, z: Tensor, spacing: float, lengthscale: Tensor) -> Tensor:
    """Decoder SetConv: ``Σ_g φ(s − g) z(g)`` at each point, contracting one axis at a time.

    Args:
        rel: Target locations relative to the grid origin ``[B, Lt, 2]``.
        z: Grid features ``[B, C, Nx, Ny]``.
        spacing: Grid spacing.
        lengthscale: Positive scalar RBF lengthscale.

    Returns:
        Features at the targets ``[B, Lt, C]``.
    """
    b, c, nx, ny = z.shape
    lt = rel.shape[1]
    psi_x = _rbf(rel[..., 0], nx, spacing, lengthscale)  # [B, Lt, Nx]
    psi_y = _rbf(rel[..., 1], ny, spacing, lengthscale)  # [B, Lt, Ny]
    # x first, as one product over the grid rows [B, Nx, Ny·C] (free for a channels-last z):
    # contiguous operands keep the product and its gradients at the BLAS rate
    rows = z.permute(0, 2, 3, 1).reshape(b, nx, ny * c)
    zx = torch.bmm(psi_x, rows).view(b * lt, ny, c)  # [B·Lt, Ny, C]
    return torch.bmm(psi_y.reshape(b * lt, 1, ny), zx).view(b, lt, c)


class UNet(nn.Module):
    """UNet-style CNN: stride-2 convs down, transposed convs up, concatenated skips, ReLU.

    Works for any grid size: each upsampled map is cropped to its skip connection.

    Args:
        in_channels: Input channels.
        channels: Width ``C`` of every level (and of the output).
        depth: Number of down/up levels.
        kernel_size: Odd kernel size of every convolution.
    """

    def __init__(self, in_channels: int, channels: int, depth: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.inp = nn.Conv2d(in_channels, channels, kernel_size, padding=pad)
        self.down = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size, stride=2, padding=pad)
            for _ in range(depth)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels, channels, kernel_size, stride=2, padding=pad,
                               output_padding=1)
            for _ in range(depth)
        )
        self.merge = nn.ModuleList(
            nn.Conv2d(2 * channels, channels, kernel_size, padding=pad) for _ in range(depth)
        )

    def forward(self, h: Tensor) -> Tensor:
        """``[B, C_in, Nx, Ny]`` → ``[B, C, Nx, Ny]``."""
        h = F.relu(self.inp(h))
        skips = []
        for down in self.down:
            skips.append(h)
            h = F.relu(down(h))
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            h = F.relu(up(h))[..., : skip.shape[-2], : skip.shape[-1]]
            h = F.relu(merge(torch.cat([h, skip], dim=1)))
        return h


class ResidualCNN(nn.Module):
    """The paper's CNN: a pointwise input convolution, then depthwise-separable residual blocks.

    Each block at the constant width ``C`` is ``pw₂(x + dw₂(relu(bn₂(pw₁(dw₁(relu(bn₁(x))))))))``
    (``dw``: depthwise ``kernel_size²`` convolution, ``pw``: pointwise), as the reference
    package's ConvCNP blocks.

    Args:
        in_channels: Input channels.
        channels: Width ``C`` of every block (and of the output).
        num_blocks: Residual blocks.
        kernel_size: Odd kernel size of the depthwise convolutions.
    """

    def __init__(self, in_channels: int, channels: int, num_blocks: int,
                 kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.inp = nn.Conv2d(in_channels, channels, 1)

        def inner() -> nn.Sequential:
            return nn.Sequential(
                nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels),
                nn.Conv2d(channels, channels, 1),
                nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels))

        self.blocks = nn.ModuleList(inner() for _ in range(num_blocks))
        self.outs = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_blocks))

    def forward(self, h: Tensor) -> Tensor:
        """``[B, C_in, Nx, Ny]`` → ``[B, C, Nx, Ny]``."""
        h = self.inp(h)
        for block, out in zip(self.blocks, self.outs, strict=True):
            h = out(h + block(h))
        return h


@register_family("convcnp")
class ConvCNP(NeuralProcess):
    """ConvCNP on 2D locations: SetConv → grid → UNet → SetConv → Gaussian head.

    Args:
        config: Model configuration (default: 596,100 parameters).
        **overrides: Fields of :class:`ConvCNPConfig` to change, e.g. ``channels=32``.

    Example:
        >>> model = ConvCNP(channels=32, depth=3)
        >>> dist = model(batch)          # torch.distributions.Normal, [B, Lt, Df]
    """

    config_class = ConvCNPConfig

    def __init__(self, config: ConvCNPConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        config = self.config
        init = math.log(2.0 / config.points_per_unit)
        self.log_lengthscale_enc = nn.Parameter(torch.tensor(init))
        self.log_lengthscale_dec = nn.Parameter(torch.tensor(init))
        self.cnn = (UNet(1 + config.value_inputs, config.channels, config.depth,
                         config.kernel_size) if config.net == "unet" else
                    ResidualCNN(1 + config.value_inputs, config.channels, config.num_blocks,
                                config.kernel_size))
        self.head = likelihood_head(config.likelihood, (config.channels, *config.head_hidden),
                                    config.dim_f, config.min_std)
        reference_init_(self.head)

    def grid(self, batch: Batch) -> tuple[Tensor, tuple[int, int]]:
        """Per-task grid origin and the batch's grid size (see the module docstring).

        Args:
            batch: A validated, sanitized batch.

        Returns:
            ``(origin, (Nx, Ny))``: origin ``[B, 1, 2]`` and grid points per axis.

        Raises:
            ValueError: If the grid would exceed ``max_points_per_axis``.
        """
        cfg, s_ctx, s_test = self.config, batch.s_ctx, batch.s_test
        if cfg.grid_bounds is not None:
            lo, hi = cfg.grid_bounds
            origin = torch.full_like(s_ctx[:, :1], lo)
            extents = [hi - lo] * 2
        else:
            valid = batch.context_mask()[..., None]
            lo = torch.minimum(
                torch.where(valid, s_ctx, math.inf).amin(dim=1), s_test.amin(dim=1)
            )  # [B, 2]
            hi = torch.maximum(
                torch.where(valid, s_ctx, -math.inf).amax(dim=1), s_test.amax(dim=1)
            )
            origin = (lo - cfg.margin)[:, None]
            extents = [e + 2 * cfg.margin for e in (hi - lo).amax(dim=0).tolist()]
        n_x, n_y = (math.ceil(e * cfg.points_per_unit - _CEIL_TOL) + 1 for e in extents)
        if max(n_x, n_y) > cfg.max_points_per_axis:
            raise ValueError(
                f"s_ctx/s_test span a {n_x} x {n_y} grid at points_per_unit="
                f"{cfg.points_per_unit}, above max_points_per_axis={cfg.max_points_per_axis}; "
                "rescale the locations or raise the limit"
            )
        return origin, (n_x, n_y)

    def predictive(self, batch: Batch) -> Distribution:
        """``Normal`` ``[B, Lt, Df]`` or ``Categorical`` ``[B, Lt, C]`` at the test points."""
        origin, size = self.grid(batch)
        spacing = 1.0 / self.config.points_per_unit
        h = set_conv_to_grid(
            batch.s_ctx - origin, batch.f_ctx, batch.context_mask(), size, spacing,
            self.log_lengthscale_enc.exp(),
        )  # [B, 1 + Df, Nx, Ny]
        # channels-last: oneDNN's depthwise convolution backward is ~40x faster on the CPU in
        # this layout than in NCHW (9x9, 128 channels); the layers keep it through the CNN
        z = self.cnn(h.contiguous(memory_format=torch.channels_last))  # [B, C, Nx, Ny]
        features = set_conv_to_points(
            batch.s_test - origin, z, spacing, self.log_lengthscale_dec.exp()
        )  # [B, Lt, C]
        return self.head(features, batch.offset_test)
