"""Gaussian-process tasks: prior draws, true hyperparameters, and the base of GP-field tasks.

:class:`GPTask` is the part every synthetic GP benchmark shares: draw the batch's locations
(the subclass decides where), one variance and lengthscale per batch, one function per
task, a context/test split with a random number of valid context points, and noise on the
observed values. Its exact oracle is :func:`bsatnp.tasks.oracle.gp_posterior`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor
from torch.distributions import Normal

from bsatnp.batch import Batch
from bsatnp.config import check_literals
from bsatnp.tasks.base import Task
from bsatnp.tasks.kernels import Kernel, KernelName, get_kernel
from bsatnp.tasks.oracle import GPParams, gp_posterior
from bsatnp.tasks.priors import Beta, Fixed, Prior
from bsatnp.tasks.samplers import split_context_test

Targets = Literal["joint", "conditional"]
"""Ways to draw test targets (see :class:`GPTask`)."""
TARGETS: tuple[str, ...] = get_args(Targets)


def sample_gp(
    x: Tensor,
    kernel: str | Kernel,
    var: Tensor | float,
    lengthscale: Tensor | float,
    *,
    jitter: float = 1e-5,
    generator: torch.Generator | None = None,
    n_draws: int = 1,
    **kernel_kwargs: Tensor | float,
) -> Tensor:
    """Draw functions from a zero-mean GP prior at the given inputs.

    The covariance ``K + jitter·I`` is built and Cholesky-factorised in float64; each
    draw is ``L z`` with ``z ~ N(0, I)`` from ``generator``.

    Args:
        x: Inputs ``[B, N, D]``.
        kernel: Kernel name or function (see :mod:`bsatnp.tasks.kernels`).
        var: Kernel variance ``[B]`` or scalar.
        lengthscale: Kernel lengthscale ``[B]`` or scalar.
        jitter: Added to the covariance diagonal for numerical stability.
        generator: Source of randomness (global RNG when ``None``).
        n_draws: Independent functions drawn per task (they share one factorisation).
        **kernel_kwargs: Extra kernel arguments (e.g. ``period``).

    Returns:
        Function values ``[B, N, n_draws]`` in the dtype of ``x``.
    """
    x64 = x.to(torch.float64)
    cov = get_kernel(kernel)(x64, x64, var, lengthscale, **kernel_kwargs)
    cov.diagonal(dim1=-2, dim2=-1).add_(jitter)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(
        (*x.shape[:2], n_draws), generator=generator, dtype=torch.float64, device=x.device
    )
    return (chol @ z).to(x.dtype)


@dataclass(frozen=True)
class GPTask(Task):
    """Batches of GP functions on shared random locations (the subclass places them).

    Per batch: ``n_ctx + n_test`` locations from :meth:`locations`, shared by the
    ``batch_size`` tasks; one variance and one lengthscale from their priors; an independent
    GP draw per task. The points are permuted (per task, or once per batch with
    ``shared_permutation``); the first ``n_ctx`` are context slots of which the first
    ``k ~ U{min_ctx, …, max_ctx}`` are valid, the next ``n_test`` are test points. Noise
    ``N(0, noise_std²)`` is added to context values only; test targets are noise-free.

    Test targets are drawn in one of two ways (``targets``):

    * ``"joint"`` (the protocol): one GP draw over all points, so test targets are
      correlated with each other. Cost ``O((n_ctx + n_test)³)`` per batch.
    * ``"conditional"``: the context values are drawn jointly and each test target
      independently from its exact conditional given the valid noisy context (the oracle's
      predictive). Every pair (context, one test target) has exactly the joint
      distribution, so per-point metrics (NLL, RMSE, coverage, CRPS) keep their expectation
      for every model whose test predictions depend on the context and their own location
      only; it costs ``O(n_ctx³ + n_ctx² n_test)`` per task and yields the oracle for free.
      Not for training or plots: test targets carry no correlation among themselves.

    Attributes:
        batch_size: Tasks per batch ``B``.
        n_ctx: Context slots ``Lc`` (valid and padded).
        n_test: Test points ``Lt``.
        min_ctx: Fewest valid context points per task (inclusive).
        max_ctx: Most valid context points per task (inclusive, at most ``n_ctx``).
        kernel: Kernel name (a key of :data:`bsatnp.tasks.kernels.KERNELS`).
        kernel_kwargs: Extra kernel arguments (e.g. ``{"period": 1.0}``).
        var_prior: Prior of the kernel variance (one draw per batch).
        lengthscale_prior: Prior of the lengthscale (one draw per batch).
        noise_std: Standard deviation of the noise on context values.
        jitter: Diagonal jitter of the prior covariance used for the draws.
        targets: ``"joint"`` or ``"conditional"`` (above; evaluation only).
        shared_permutation: One permutation for the whole batch (the reference's
            protocol): the tasks then share context and test locations.
    """

    has_oracle: ClassVar[bool] = True
    has_field: ClassVar[bool] = True
    dim_s: ClassVar[int] = 2

    batch_size: int = 8
    n_ctx: int = 512
    n_test: int = 1024
    min_ctx: int = 128
    max_ctx: int = 511
    kernel: KernelName = "rbf"
    kernel_kwargs: dict[str, float] = field(default_factory=dict)
    var_prior: Prior = field(default_factory=lambda: Fixed(1.0))
    lengthscale_prior: Prior = field(default_factory=lambda: Beta(3.0, 7.0))
    noise_std: float = 0.1
    jitter: float = 1e-5
    targets: Targets = "joint"
    shared_permutation: bool = False

    def __post_init__(self) -> None:
        check_literals(self)
        if not 1 <= self.min_ctx <= self.max_ctx <= self.n_ctx:
            raise ValueError(
                "need 1 <= min_ctx <= max_ctx <= n_ctx, got "
                f"min_ctx={self.min_ctx}, max_ctx={self.max_ctx}, n_ctx={self.n_ctx}"
            )
        if self.batch_size < 1 or self.n_test < 1:
            raise ValueError(
                f"batch_size and n_test must be >= 1, got {self.batch_size}, {self.n_test}"
            )
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @property
    def n_points(self) -> int:
        """Locations per batch, ``n_ctx + n_test``."""
        return self.n_ctx + self.n_test

    @abstractmethod
    def locations(self, generator: torch.Generator | None) -> Tensor:
        """The batch's shared locations ``[1, n_points, dim_s]`` (float32)."""

    def model_defaults(self) -> dict[str, Any]:
        """Locations of width ``dim_s``, scalar Gaussian values."""
        return {"dim_x": 0, "dim_s": self.dim_s, "dim_t": 0, "dim_f": 1,
                "likelihood": "gaussian"}

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch (float32; ``f_ctx`` noisy, ``f_test`` noise-free)."""
        return self.draw(generator)[0]

    def draw(self, generator: torch.Generator | None = None) -> tuple[Batch, GPParams]:
        """One batch and the true :class:`GPParams` that made it (what an oracle needs)."""
        if self.targets == "conditional":
            batch, params, _ = self._draw_conditional(generator)
            return batch, params
        return self._draw_joint(generator)

    def sample_with_oracle(
        self, generator: torch.Generator | None = None, split: str = "test"
    ) -> tuple[Batch, Normal]:
        """The batch :meth:`sample` draws from this generator state and its oracle.

        The oracle is the exact GP predictive ``[B, Lt, 1]`` at the test points.
        """
        if self.targets == "conditional":
            batch, _, oracle = self._draw_conditional(generator)
            return batch, oracle
        batch, params = self._draw_joint(generator)
        return batch, gp_posterior(batch, params)

    def field_batch(self, n_ctx: int, grid_size: int,
                    generator: torch.Generator | None = None) -> tuple[Batch, str]:
        """One task for a figure: ``n_ctx`` noisy context points and a test grid.

        The context points are a random subset of draws of :meth:`locations` (as many
        draws as ``n_ctx`` needs); the grid covers their bounding box; the function is
        drawn jointly at both with hyperparameters from the priors.

        Returns:
            ``(batch, caption)``: ``B = 1``, ``s_ctx [1, n_ctx, 2]``, noisy
            ``f_ctx [1, n_ctx, 1]``, ``s_test [1, G², 2]`` in row-major grid order (row =
            second coordinate) and noise-free ``f_test [1, G², 1]``; the caption names
            the drawn lengthscale.

        Raises:
            ValueError: If ``n_ctx < 1`` or ``grid_size < 2``.
        """
        if n_ctx < 1 or grid_size < 2:
            raise ValueError(f"need n_ctx >= 1 and grid_size >= 2, got n_ctx={n_ctx}, "
                             f"grid_size={grid_size}")
        draws = -(-n_ctx // self.n_points)
        locs = torch.cat([self.locations(generator)[0] for _ in range(draws)])
        s_ctx = locs[torch.randperm(len(locs), generator=generator)[:n_ctx]]
        lo, hi = locs.min(dim=0).values, locs.max(dim=0).values
        rows, cols = torch.meshgrid(torch.linspace(lo[1], hi[1], grid_size),
                                    torch.linspace(lo[0], hi[0], grid_size), indexing="ij")
        grid = torch.stack([cols.flatten(), rows.flatten()], dim=-1)  # [G², 2]
        var = self.var_prior.sample(1, generator)
        lengthscale = self.lengthscale_prior.sample(1, generator)
        f = sample_gp(torch.cat([s_ctx, grid])[None], self.kernel, var, lengthscale,
                      jitter=self.jitter, generator=generator, **self.kernel_kwargs)
        noise = self.noise_std * torch.randn(1, n_ctx, 1, generator=generator)
        batch = Batch(s_ctx=s_ctx[None], f_ctx=f[:, :n_ctx] + noise, s_test=grid[None],
                      f_test=f[:, n_ctx:])
        return batch, f"lengthscale {float(lengthscale):.2f}"

    def _draw_joint(self, generator: torch.Generator | None) -> tuple[Batch, GPParams]:
        """One GP draw over all locations of the batch (shared factorisation)."""
        B, Lc = self.batch_size, self.n_ctx
        locs, var, lengthscale = self._locations_and_hyperparameters(generator)
        draws = sample_gp(locs, self.kernel, var, lengthscale, jitter=self.jitter,
                          generator=generator, n_draws=B, **self.kernel_kwargs)  # [1, N, B]
        f = draws[0].T[..., None]  # [B, N, 1]: one function per task
        perm, mask_ctx = self._split(generator)
        s, f = locs[0][perm], f.gather(1, perm[..., None])
        noise = self.noise_std * torch.randn(B, Lc, 1, generator=generator)
        batch = Batch(s_ctx=s[:, :Lc], f_ctx=f[:, :Lc] + noise, mask_ctx=mask_ctx,
                      s_test=s[:, Lc:], f_test=f[:, Lc:])
        return batch, self._params(var, lengthscale)

    def _draw_conditional(
        self, generator: torch.Generator | None
    ) -> tuple[Batch, GPParams, Normal]:
        """Noisy context drawn jointly per task, test targets from the exact conditional."""
        B, Lc = self.batch_size, self.n_ctx
        locs, var, lengthscale = self._locations_and_hyperparameters(generator)
        perm, mask_ctx = self._split(generator)
        s = locs[0][perm]
        params = self._params(var, lengthscale)
        f_ctx = sample_gp(  # noisy values directly: covariance K + (jitter + noise²) I
            s[:, :Lc], self.kernel, params.var, params.lengthscale,
            jitter=self.jitter + self.noise_std**2, generator=generator, **self.kernel_kwargs,
        )  # [B, Lc, 1]
        batch = Batch(s_ctx=s[:, :Lc], f_ctx=f_ctx, mask_ctx=mask_ctx, s_test=s[:, Lc:],
                      f_test=torch.zeros(B, self.n_test, 1))
        oracle = gp_posterior(batch, params)
        eps = torch.randn(B, self.n_test, 1, generator=generator)
        return replace(batch, f_test=oracle.mean + oracle.stddev * eps), params, oracle

    def _locations_and_hyperparameters(
        self, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Shared locations ``[1, N, Ds]``, variance ``[1]`` and lengthscale ``[1]``."""
        locs = self.locations(generator)
        var = self.var_prior.sample(1, generator)
        lengthscale = self.lengthscale_prior.sample(1, generator)
        return locs, var, lengthscale

    def _split(self, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Permutation ``[B, N]`` of the shared points and ``mask_ctx [B, Lc]``."""
        return split_context_test(self.batch_size, self.n_points, self.n_ctx, self.min_ctx,
                                  self.max_ctx, generator, self.shared_permutation)

    def _params(self, var: Tensor, lengthscale: Tensor) -> GPParams:
        B = self.batch_size
        return GPParams(kernel=self.kernel, var=var.repeat(B),
                        lengthscale=lengthscale.repeat(B), noise=self.noise_std,
                        jitter=self.jitter, kernel_kwargs=dict(self.kernel_kwargs))


def uniform_box(n: int, dim: int, box: tuple[float, float],
                generator: torch.Generator | None) -> Tensor:
    """``n`` points i.i.d. uniform on ``[lo, hi]^dim``, shape ``[1, n, dim]``."""
    lo, hi = box
    return lo + (hi - lo) * torch.rand(1, n, dim, generator=generator)


def check_box(box: tuple[float, float], name: str = "box") -> None:
    """Raise ``ValueError`` unless ``box = (lo, hi)`` with ``lo < hi``."""
    if not box[0] < box[1]:
        raise ValueError(f"{name} must be (lo, hi) with lo < hi, got {box}")
