"""Exact GP posterior predictive with the true hyperparameters (the oracle baseline)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from torch.distributions import Normal

from bsatnp.batch import Batch
from bsatnp.tasks.gp import GPParams
from bsatnp.tasks.kernels import get_kernel


def gp_posterior(batch: Batch, params: GPParams) -> Normal:
    """Posterior predictive of the latent function at the test locations (stationary kernels).

    The prior is the generative model of the task: covariance ``K + jitter·I`` for the
    latent function and independent ``N(0, noise²)`` noise on context values; test targets
    are noise-free, so the predictive is for the latent function. Computed in float64, one
    task at a time on that task's valid context only, so padded slots cannot contribute
    whatever they hold and the cost follows the valid count ``k`` (``O(k³ + k²·Lt)``), not
    the padded width.

    Args:
        batch: Batch with ``s_ctx [B, Lc, Ds]``, ``f_ctx [B, Lc, 1]``, optional
            ``mask_ctx [B, Lc]`` and ``s_test [B, Lt, Ds]``.
        params: True hyperparameters (``var``, ``lengthscale`` ``[B]``, ``noise``, ...).

    Returns:
        ``Normal`` with ``mean`` and ``stddev`` of shape ``[B, Lt, 1]`` (float32); a task
        without valid context gets the prior ``N(0, var + jitter)``.
    """
    if batch.s_ctx is None or batch.s_test is None:
        raise ValueError("gp_posterior needs s_ctx and s_test")
    if batch.f_ctx.shape[-1] != 1:
        raise ValueError(
            f"gp_posterior needs scalar f_ctx [B, Lc, 1], got {tuple(batch.f_ctx.shape)}"
        )
    valid = batch.context_mask()  # [B, Lc]
    var = torch.as_tensor(params.var, dtype=torch.float64).expand(valid.shape[0])
    lengthscale = torch.as_tensor(params.lengthscale, dtype=torch.float64).expand(valid.shape[0])
    moments = [
        _task_posterior(
            batch.s_ctx[b, valid[b]], batch.f_ctx[b, valid[b]], batch.s_test[b],
            replace(params, var=var[b:b + 1], lengthscale=lengthscale[b:b + 1]),
        )
        for b in range(valid.shape[0])
    ]
    mean = torch.stack([m for m, _ in moments])  # [B, Lt, 1]
    std = torch.stack([s for _, s in moments])
    return Normal(mean.to(torch.float32), std.to(torch.float32))


def _task_posterior(s_ctx: Tensor, f_ctx: Tensor, s_test: Tensor,
                    params: GPParams) -> tuple[Tensor, Tensor]:
    """Predictive mean and std ``[Lt, 1]`` (float64) of one task from its valid context.

    Args:
        s_ctx: Valid context locations ``[k, Ds]`` (``k`` may be 0).
        f_ctx: Their noisy values ``[k, 1]``.
        s_test: Test locations ``[Lt, Ds]``.
        params: The task's hyperparameters (``var``, ``lengthscale`` of shape ``[1]``).
    """
    kernel = get_kernel(params.kernel)
    s_ctx, s_test = s_ctx.double(), s_test.double()

    def cov(a: Tensor, b: Tensor) -> Tensor:
        return kernel(a[None], b[None], params.var, params.lengthscale,
                      **params.kernel_kwargs)[0]

    k_cc = cov(s_ctx, s_ctx)  # [k, k]
    k_cc.diagonal().add_(params.jitter + params.noise**2)
    k_ct = cov(s_ctx, s_test)  # [k, Lt]
    chol = torch.linalg.cholesky(k_cc)
    mean = k_ct.mT @ torch.cholesky_solve(f_ctx.double(), chol)  # [Lt, 1]
    v = torch.linalg.solve_triangular(chol, k_ct, upper=False)  # [k, Lt]
    # Stationary kernels: k(s, s) is the same for every s, so one point gives the diagonal.
    prior_var = cov(s_test[:1], s_test[:1])[0, 0] + params.jitter
    var = (prior_var - v.square().sum(dim=0)).clamp_min(1e-12)  # [Lt]
    return mean, var.sqrt()[:, None]
