"""Exact GP posterior predictive with the true hyperparameters (the oracle baseline)."""

from __future__ import annotations

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
    are noise-free, so the predictive is for the latent function. Computed in float64 for
    all tasks at once. Padded context slots are neutralised: their covariance rows and
    columns become those of the identity, their values zero and their cross-covariances
    with test points zero, so they get zero weight whatever they held.

    Args:
        batch: Batch with ``s_ctx [B, Lc, Ds]``, ``f_ctx [B, Lc, 1]``, optional
            ``mask_ctx [B, Lc]`` and ``s_test [B, Lt, Ds]``.
        params: True hyperparameters (``var``, ``lengthscale`` ``[B]``, ``noise``, ...).

    Returns:
        ``Normal`` with ``mean`` and ``stddev`` of shape ``[B, Lt, 1]`` (float32).
    """
    if batch.s_ctx is None or batch.s_test is None:
        raise ValueError("gp_posterior needs s_ctx and s_test")
    if batch.f_ctx.shape[-1] != 1:
        raise ValueError(
            f"gp_posterior needs scalar f_ctx [B, Lc, 1], got {tuple(batch.f_ctx.shape)}"
        )
    kernel = get_kernel(params.kernel)
    valid = batch.context_mask()  # [B, Lc]
    pair = valid[:, :, None] & valid[:, None, :]  # [B, Lc, Lc]
    s_ctx = torch.where(valid[..., None], batch.s_ctx, 0).to(torch.float64)
    s_test = batch.s_test.to(torch.float64)
    y = torch.where(valid[..., None], batch.f_ctx, 0).to(torch.float64)  # [B, Lc, 1]

    def cov(a: Tensor, b: Tensor) -> Tensor:
        return kernel(a, b, params.var, params.lengthscale, **params.kernel_kwargs)

    k_cc = torch.where(pair, cov(s_ctx, s_ctx), 0.0)
    diag = torch.where(valid, params.jitter + params.noise**2, 1.0)  # [B, Lc]
    k_cc = k_cc + torch.diag_embed(diag)
    k_ct = torch.where(valid[..., None], cov(s_ctx, s_test), 0.0)  # [B, Lc, Lt]
    chol = torch.linalg.cholesky(k_cc)
    alpha = torch.cholesky_solve(y, chol)  # [B, Lc, 1]
    mean = k_ct.mT @ alpha  # [B, Lt, 1]
    v = torch.linalg.solve_triangular(chol, k_ct, upper=False)  # [B, Lc, Lt]
    # Stationary kernels: k(s, s) is the same for every s, so one point gives the diagonal.
    prior_var = cov(s_test[:, :1], s_test[:, :1])[..., 0] + params.jitter  # [B, 1]
    var = (prior_var - v.square().sum(dim=1)).clamp_min(1e-12)
    return Normal(mean.to(torch.float32), var.sqrt()[..., None].to(torch.float32))
