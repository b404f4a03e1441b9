"""Generic spatial task with fixed effects (PROTOCOLS §4): ``f = xβ + g(s) + ε``.

Per batch: ``n_ctx + n_test`` locations uniform on ``[−2, 2]²`` with covariates
``x ~ N(0, I)`` (``dim_x`` features per location), one weight vector ``β ~ N(0, I)`` and one
lengthscale (Beta(3, 7)); per task: a GP draw ``g`` (RBF, variance 1) and a noise level
``σ ~ HalfNormal(noise_scale)``. Observations carry the noise on context **and** test
points (``f`` is defined with ``ε``). A model embeds ``x`` and uses ``s`` through a bias.
The oracle integrates ``β ~ N(0, I)`` out (covariance ``k(s, s') + x·x'``), so it is exact
for each task given its own context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Normal

from bsatnp.batch import Batch
from bsatnp.tasks.gp import GPTask, check_box, sample_gp, uniform_box
from bsatnp.tasks.oracle import GPParams, gp_posterior
from bsatnp.tasks.priors import Fixed, Prior
from bsatnp.tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class FixedEffectsTask(GPTask):
    """Spatial GP plus linear fixed effects (fields of :class:`~bsatnp.tasks.gp.GPTask`).

    ``noise_std`` is unused: each task's noise level is drawn from ``noise_prior``.

    Attributes:
        box: ``(lo, hi)`` of the square the locations are drawn from.
        dim_x: Covariates per location.
        noise_scale: Scale of the half-normal prior of the per-task noise std.
    """

    name = "fixed_effects"
    has_field = False  # values depend on per-point covariates: no map to draw

    batch_size: int = 32
    n_ctx: int = 64
    n_test: int = 64
    min_ctx: int = 13
    max_ctx: int = 63
    var_prior: Prior = field(default_factory=lambda: Fixed(1.0))
    box: tuple[float, float] = (-2.0, 2.0)
    dim_x: int = 10
    noise_scale: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_box(self.box)
        if self.dim_x < 1 or self.noise_scale <= 0:
            raise ValueError(f"dim_x must be >= 1 and noise_scale > 0, got {self.dim_x}, "
                             f"{self.noise_scale}")
        if self.targets != "joint":
            raise ValueError("fixed_effects draws its targets jointly (targets: joint)")

    def model_defaults(self) -> dict[str, Any]:
        """Covariates of width ``dim_x``, 2D locations, scalar Gaussian values."""
        return {**super().model_defaults(), "dim_x": self.dim_x}

    def locations(self, generator: torch.Generator | None) -> Tensor:
        """``n_points`` uniform on ``box²``, ``[1, N, 2]``."""
        return uniform_box(self.n_points, 2, self.box, generator)

    def draw(self, generator: torch.Generator | None = None) -> tuple[Batch, GPParams]:
        """One batch (``x``, ``s``, noisy ``f`` on both sets) and its true parameters."""
        B, Lc, N = self.batch_size, self.n_ctx, self.n_points
        locs, var, lengthscale = self._locations_and_hyperparameters(generator)
        x = torch.randn(1, N, self.dim_x, generator=generator)
        beta = torch.randn(self.dim_x, 1, generator=generator)
        noise = self.noise_scale * torch.randn(B, generator=generator, dtype=torch.float64).abs()
        g = sample_gp(locs, self.kernel, var, lengthscale, jitter=self.jitter,
                      generator=generator, n_draws=B)[0].T[..., None]  # [B, N, 1]
        eps = noise[:, None, None].float() * torch.randn(B, N, 1, generator=generator)
        f = x @ beta + g + eps  # [B, N, 1]
        perm, mask_ctx = self._split(generator)
        s, x, f = locs[0][perm], x[0][perm], f.gather(1, perm[..., None])
        batch = Batch(x_ctx=x[:, :Lc], s_ctx=s[:, :Lc], f_ctx=f[:, :Lc], mask_ctx=mask_ctx,
                      x_test=x[:, Lc:], s_test=s[:, Lc:], f_test=f[:, Lc:])
        params = GPParams(kernel=self.kernel, var=var.repeat(B), lengthscale=lengthscale.repeat(B),
                          noise=noise, jitter=self.jitter, x_var=1.0, test_noise=True)
        return batch, params

    def sample_with_oracle(
        self, generator: torch.Generator | None = None, split: str = "test"
    ) -> tuple[Batch, Normal]:
        """The batch and the exact predictive of its (noisy) test targets."""
        batch, params = self.draw(generator)
        return batch, gp_posterior(batch, params)
