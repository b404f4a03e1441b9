"""The 2D-GP benchmark protocol (SPEC §8) and its evaluation domains.

Per batch: ``n_ctx + n_test`` locations i.i.d. uniform on a square box, shared by the
``batch_size`` tasks; one variance and one lengthscale drawn per batch; an independent
GP draw per task. Each task gets its own random permutation of the points: the first
``n_ctx`` are context slots of which the first ``k ~ U{min_ctx, …, max_ctx}`` are valid,
the next ``n_test`` are test points. Gaussian noise is added to context values only;
test targets are the noise-free function values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bsatnp.batch import Batch
from bsatnp.tasks.gp import GPParams, sample_gp
from bsatnp.tasks.kernels import KERNELS
from bsatnp.tasks.priors import Beta, Fixed, Prior


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
        B, N, Lc = self.batch_size, self.n_points, self.n_ctx
        lo, hi = self.box
        locs = lo + (hi - lo) * torch.rand(1, N, 2, generator=generator)
        var = self.var_prior.sample(1, generator)
        lengthscale = self.lengthscale_prior.sample(1, generator)
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
        perm = torch.argsort(torch.rand(B, N, generator=generator), dim=1)  # [B, N]
        s = locs[0][perm]  # [B, N, 2]
        f = f.gather(1, perm[..., None])  # [B, N, 1]
        n_valid = torch.randint(self.min_ctx, self.max_ctx + 1, (B,), generator=generator)
        mask_ctx = torch.arange(Lc)[None, :] < n_valid[:, None]
        noise = self.noise_std * torch.randn(B, Lc, 1, generator=generator)
        batch = Batch(
            s_ctx=s[:, :Lc],
            f_ctx=f[:, :Lc] + noise,
            mask_ctx=mask_ctx,
            s_test=s[:, Lc:],
            f_test=f[:, Lc:],
        )
        params = GPParams(
            kernel=self.kernel,
            var=var.repeat(B),
            lengthscale=lengthscale.repeat(B),
            noise=self.noise_std,
            jitter=self.jitter,
            kernel_kwargs=dict(self.kernel_kwargs),
        )
        return batch, params


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


def eval_batches(task: GP2DTask, n_batches: int, seed: int) -> Iterator[tuple[Batch, GPParams]]:
    """Yield ``n_batches`` reproducible ``(batch, params)`` pairs.

    A private ``torch.Generator`` seeded with ``seed`` drives every draw, so the same
    ``(task, n_batches, seed)`` gives identical batches regardless of the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        yield task.sample(generator)
