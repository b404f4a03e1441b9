"""The 2D-GP benchmark protocol (SPEC §8) and its evaluation domains.

Per batch: ``n_ctx + n_test`` locations i.i.d. uniform on a square box, shared by the
``batch_size`` tasks; one variance and one lengthscale drawn per batch; an independent
GP draw per task. Each task gets its own random permutation of the points: the first
``n_ctx`` are context slots of which the first ``k ~ U{min_ctx, …, max_ctx}`` are valid,
the next ``n_test`` are test points. Gaussian noise is added to context values only;
test targets are the noise-free function values.

Test targets are drawn in one of two ways (``GP2DTask.targets``):

* ``"joint"`` (the protocol): one GP draw over all ``n_ctx + n_test`` locations, so test
  targets are correlated with each other. Cost ``O((n_ctx + n_test)³)`` per batch.
* ``"conditional"``: the context values are drawn jointly, and each test target is drawn
  independently from its exact conditional given the valid noisy context, which is the
  oracle's predictive. Every pair (context, one test target) has exactly the joint
  distribution, so any metric that averages over test points (NLL, RMSE, coverage, CRPS)
  has the same expectation as under ``"joint"``, for every model whose test predictions
  depend on the context and their own location only (neural processes whose test tokens
  attend to the context only, and the oracle). It costs ``O(n_ctx³ + n_ctx² n_test)`` per
  task and yields the oracle's predictive for free (:meth:`GP2DTask.sample_with_oracle`):
  this is what makes the scaled domain (2048 + 4096 points) affordable on a CPU.
  Not for training or plots: test targets carry no spatial correlation among themselves.

Evaluation sets are reproducible per batch: batch ``i`` of seed ``s`` is drawn from a
generator seeded by ``(s, i)`` (:func:`batch_generator`), so any batch can be drawn
without drawing the ones before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.distributions import Normal

from bsatnp.baselines.gp_oracle import gp_posterior
from bsatnp.batch import Batch
from bsatnp.tasks.gp import GPParams, sample_gp
from bsatnp.tasks.kernels import KERNELS
from bsatnp.tasks.priors import Beta, Fixed, Prior

TARGETS = ("joint", "conditional")
"""Ways to draw test targets (see the module docstring)."""


@dataclass(frozen=True)
class GP2DTask:
    """Configuration and sampler of 2D-GP batches.

    Attributes:
        batch_size: Tasks per batch ``B``.
        n_ctx: Context slots ``Lc`` (valid and padded).
        n_test: Test points ``Lt``.
        min_ctx: Fewest valid context points per task (inclusive).
        max_ctx: Most valid context points per task (inclusive, at most ``n_ctx``).
        box: ``(lo, hi)`` of the square ``[lo, hi]²`` the locations are drawn from.
        kernel: Kernel name (a key of :data:`bsatnp.tasks.kernels.KERNELS`).
        kernel_kwargs: Extra kernel arguments (e.g. ``{"period": 1.0}``).
        var_prior: Prior of the kernel variance (one draw per batch).
        lengthscale_prior: Prior of the lengthscale (one draw per batch).
        noise_std: Standard deviation of the noise on context values.
        jitter: Diagonal jitter of the prior covariance used for the draws.
        targets: How test targets are drawn: ``"joint"`` (the protocol) or
            ``"conditional"`` (see the module docstring; evaluation only).
    """

    batch_size: int = 8
    n_ctx: int = 512
    n_test: int = 1024
    min_ctx: int = 128
    max_ctx: int = 511
    box: tuple[float, float] = (-2.0, 2.0)
    kernel: str = "rbf"
    kernel_kwargs: dict[str, float] = field(default_factory=dict)
    var_prior: Prior = field(default_factory=lambda: Fixed(1.0))
    lengthscale_prior: Prior = field(default_factory=lambda: Beta(3.0, 7.0))
    noise_std: float = 0.1
    jitter: float = 1e-5
    targets: str = "joint"

    def __post_init__(self) -> None:
        if not 1 <= self.min_ctx <= self.max_ctx <= self.n_ctx:
            raise ValueError(
                "need 1 <= min_ctx <= max_ctx <= n_ctx, got "
                f"min_ctx={self.min_ctx}, max_ctx={self.max_ctx}, n_ctx={self.n_ctx}"
            )
        if self.batch_size < 1 or self.n_test < 1:
            raise ValueError(
                f"batch_size and n_test must be >= 1, got {self.batch_size}, {self.n_test}"
            )
        if not self.box[0] < self.box[1]:
            raise ValueError(f"box must be (lo, hi) with lo < hi, got {self.box}")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose one of {sorted(KERNELS)}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")

    @property
    def n_points(self) -> int:
        """Locations per batch, ``n_ctx + n_test``."""
        return self.n_ctx + self.n_test

    def sample(self, generator: torch.Generator | None = None) -> tuple[Batch, GPParams]:
        """Draw one batch.

        Args:
            generator: Source of all randomness (global RNG when ``None``).

        Returns:
            ``(batch, params)``: a float32 :class:`Batch` with ``s_ctx [B, Lc, 2]``,
            ``f_ctx [B, Lc, 1]`` (noisy), ``mask_ctx [B, Lc]``, ``s_test [B, Lt, 2]`` and
            ``f_test [B, Lt, 1]`` (noise-free), and the true :class:`GPParams`.
        """
        if self.targets == "conditional":
            batch, params, _ = self._sample_conditional(generator)
            return batch, params
        return self._sample_joint(generator)

    def sample_with_oracle(
        self, generator: torch.Generator | None = None
    ) -> tuple[Batch, GPParams, Normal]:
        """Draw one batch as :meth:`sample` does, with the exact GP predictive at its tests.

        The same generator state gives the same batch as :meth:`sample`.

        Returns:
            ``(batch, params, oracle)`` where ``oracle`` is the Normal posterior predictive
            ``[B, Lt, 1]`` of :func:`~bsatnp.baselines.gp_oracle.gp_posterior`.
        """
        if self.targets == "conditional":
            return self._sample_conditional(generator)
        batch, params = self._sample_joint(generator)
        return batch, params, gp_posterior(batch, params)

    def _sample_joint(self, generator: torch.Generator | None) -> tuple[Batch, GPParams]:
        """One GP draw over all locations of the batch (shared factorisation)."""
        B, Lc = self.batch_size, self.n_ctx
        locs, var, lengthscale = self._locations_and_hyperparameters(generator)
        draws = sample_gp(
            locs,
            self.kernel,
            var,
            lengthscale,
            jitter=self.jitter,
            generator=generator,
            n_draws=B,
            **self.kernel_kwargs,
        )  # [1, N, B]: one function per task on the shared locations
        f = draws[0].T[..., None]  # [B, N, 1]
        s, perm, mask_ctx = self._split(locs, generator)
        f = f.gather(1, perm[..., None])  # [B, N, 1]
        noise = self.noise_std * torch.randn(B, Lc, 1, generator=generator)
        batch = Batch(s_ctx=s[:, :Lc], f_ctx=f[:, :Lc] + noise, mask_ctx=mask_ctx,
                      s_test=s[:, Lc:], f_test=f[:, Lc:])
        return batch, self._params(var, lengthscale)

    def _sample_conditional(
        self, generator: torch.Generator | None
    ) -> tuple[Batch, GPParams, Normal]:
        """Noisy context drawn jointly per task, test targets from the exact conditional."""
        B, Lc = self.batch_size, self.n_ctx
        locs, var, lengthscale = self._locations_and_hyperparameters(generator)
        s, _, mask_ctx = self._split(locs, generator)
        params = self._params(var, lengthscale)
        f_ctx = sample_gp(  # noisy values directly: covariance K + (jitter + noise²) I
            s[:, :Lc],
            self.kernel,
            params.var,
            params.lengthscale,
            jitter=self.jitter + self.noise_std**2,
            generator=generator,
            **self.kernel_kwargs,
        )  # [B, Lc, 1]
        batch = Batch(s_ctx=s[:, :Lc], f_ctx=f_ctx, mask_ctx=mask_ctx, s_test=s[:, Lc:],
                      f_test=torch.zeros(B, self.n_test, 1))
        oracle = gp_posterior(batch, params)
        eps = torch.randn(B, self.n_test, 1, generator=generator)
        return replace(batch, f_test=oracle.mean + oracle.stddev * eps), params, oracle

    def _locations_and_hyperparameters(
        self, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared locations ``[1, N, 2]``, variance ``[1]`` and lengthscale ``[1]``."""
        lo, hi = self.box
        locs = lo + (hi - lo) * torch.rand(1, self.n_points, 2, generator=generator)
        var = self.var_prior.sample(1, generator)
        lengthscale = self.lengthscale_prior.sample(1, generator)
        return locs, var, lengthscale

    def _split(
        self, locs: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-task order of the shared locations and the valid-context mask.

        Returns:
            Permuted locations ``[B, N, 2]``, the permutation ``[B, N]`` and
            ``mask_ctx [B, Lc]`` (the first ``k ~ U{min_ctx, …, max_ctx}`` slots valid).
        """
        B, N = self.batch_size, self.n_points
        perm = torch.argsort(torch.rand(B, N, generator=generator), dim=1)  # [B, N]
        n_valid = torch.randint(self.min_ctx, self.max_ctx + 1, (B,), generator=generator)
        mask_ctx = torch.arange(self.n_ctx)[None, :] < n_valid[:, None]
        return locs[0][perm], perm, mask_ctx

    def _params(self, var: torch.Tensor, lengthscale: torch.Tensor) -> GPParams:
        B = self.batch_size
        return GPParams(
            kernel=self.kernel,
            var=var.repeat(B),
            lengthscale=lengthscale.repeat(B),
            noise=self.noise_std,
            jitter=self.jitter,
            kernel_kwargs=dict(self.kernel_kwargs),
        )


def in_domain(**overrides: Any) -> GP2DTask:
    """Training/evaluation domain: ``[−2, 2]²``, 512 context slots (128–511 valid), 1024 test."""
    return GP2DTask(**overrides)


def shifted(**overrides: Any) -> GP2DTask:
    """Shifted domain ``[8, 12]²`` with the in-domain sizes."""
    return GP2DTask(**{"box": (8.0, 12.0), **overrides})


def scaled(**overrides: Any) -> GP2DTask:
    """Scaled domain ``[−4, 4]²`` with 4× the points: 2048 slots (512–2047 valid), 4096 test."""
    defaults: dict[str, Any] = {
        "box": (-4.0, 4.0),
        "n_ctx": 2048,
        "n_test": 4096,
        "min_ctx": 512,
        "max_ctx": 2047,
    }
    return GP2DTask(**{**defaults, **overrides})


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The private generator of batch ``index`` of the evaluation set with ``seed``.

    Seeded from ``numpy.random.SeedSequence([seed, index])``, so distinct ``(seed, index)``
    pairs give unrelated streams (seeds 1000 and 2000 share no batch).
    """
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def eval_batches(task: GP2DTask, n_batches: int, seed: int) -> Iterator[tuple[Batch, GPParams]]:
    """Yield ``n_batches`` reproducible ``(batch, params)`` pairs.

    Batch ``i`` is ``task.sample(batch_generator(seed, i))``: the same ``(task, seed)``
    gives identical batches regardless of the global RNG, and the first ``n`` batches do
    not depend on ``n_batches``.
    """
    for index in range(n_batches):
        yield task.sample(batch_generator(seed, index))
