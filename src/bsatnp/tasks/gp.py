"""Batched Gaussian-process prior draws and the hyperparameters that produced them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bsatnp.tasks.kernels import Kernel, get_kernel


@dataclass(frozen=True)
class GPParams:
    """True hyperparameters of a batch of GP tasks (what an oracle needs).

    Attributes:
        kernel: Kernel name, a key of :data:`bsatnp.tasks.kernels.KERNELS`.
        var: Kernel variance per task ``[B]`` (float64).
        lengthscale: Kernel lengthscale per task ``[B]`` (float64).
        noise: Standard deviation of the Gaussian noise on observed (context) values.
        jitter: Diagonal jitter added to the prior covariance when the functions were drawn.
        kernel_kwargs: Extra kernel arguments (e.g. ``period`` for ``"periodic"``).
    """

    kernel: str
    var: Tensor
    lengthscale: Tensor
    noise: float
    jitter: float = 1e-5
    kernel_kwargs: dict[str, float] = field(default_factory=dict)


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
