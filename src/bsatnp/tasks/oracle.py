"""Exact Gaussian-process posterior predictive with the true hyperparameters (the oracle).

Every task whose predictive is Gaussian given its hyperparameters scores this oracle next
to the models, so each result table has a gap to the best possible predictor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Normal

from bsatnp.batch import Batch
from bsatnp.tasks.kernels import get_kernel


@dataclass(frozen=True)
class GPParams:
    """True hyperparameters of a batch of GP tasks (what the oracle needs).

    The model of task ``b`` is ``f(s, x) = g(s) + x·β + ε`` with ``g ~ GP(0, k)``
    (covariance ``k + jitter·I``), ``β ~ N(0, x_var·I)`` (absent when ``x_var = 0``) and
    ``ε ~ N(0, noise[b]²)`` on context values (and on test targets when ``test_noise``).

    Attributes:
        kernel: Kernel name, a key of :data:`bsatnp.tasks.kernels.KERNELS`.
        var: Kernel variance per task ``[B]`` (float64).
        lengthscale: Kernel lengthscale per task ``[B]`` (float64).
        noise: Noise standard deviation, one for all tasks or ``[B]``.
        jitter: Diagonal jitter added to the prior covariance when the functions were drawn.
        kernel_kwargs: Extra kernel arguments (e.g. ``period`` for ``"periodic"``).
        x_var: Prior variance of each fixed-effect weight (0: no fixed effects).
        test_noise: Whether test targets carry the noise too.
    """

    kernel: str
    var: Tensor
    lengthscale: Tensor
    noise: Tensor | float
    jitter: float = 1e-5
    kernel_kwargs: dict[str, float] = field(default_factory=dict)
    x_var: float = 0.0
    test_noise: bool = False


def gp_posterior(batch: Batch, params: GPParams) -> Normal:
    """Posterior predictive at the test points, one task at a time in float64.

    Each task uses its valid context only, so padded slots cannot contribute whatever
    they hold and the cost follows the valid count ``k`` (``O(k³ + k²·Lt)``). Fixed effects
    are integrated out: their weights add ``x_var · x xᵀ`` to the covariance.

    Args:
        batch: ``s_ctx [B, Lc, Ds]``, ``f_ctx [B, Lc, 1]``, optional ``mask_ctx [B, Lc]``,
            ``s_test [B, Lt, Ds]`` (and ``x_ctx/x_test`` when ``params.x_var > 0``).
        params: True hyperparameters (``var``, ``lengthscale`` ``[B]``, ``noise``, ...).

    Returns:
        ``Normal`` with ``mean`` and ``stddev`` ``[B, Lt, 1]`` (float32).

    Raises:
        ValueError: If locations (or covariates) are missing or ``f`` is not scalar.
    """
    if batch.s_ctx is None or batch.s_test is None:
        raise ValueError("gp_posterior needs s_ctx and s_test")
    if params.x_var > 0 and (batch.x_ctx is None or batch.x_test is None):
        raise ValueError("gp_posterior needs x_ctx and x_test when params.x_var > 0")
    if batch.f_ctx.shape[-1] != 1:
        raise ValueError(
            f"gp_posterior needs scalar f_ctx [B, Lc, 1], got {tuple(batch.f_ctx.shape)}"
        )
    valid = batch.context_mask()  # [B, Lc]
    B = valid.shape[0]
    per_task = {
        name: torch.as_tensor(value, dtype=torch.float64).expand(B)
        for name, value in (("var", params.var), ("lengthscale", params.lengthscale),
                            ("noise", params.noise))
    }
    moments = []
    for b in range(B):
        keep = valid[b]
        x_ctx = None if params.x_var == 0 else batch.x_ctx[b, keep]
        x_test = None if params.x_var == 0 else batch.x_test[b]
        moments.append(_task_posterior(
            batch.s_ctx[b, keep], x_ctx, batch.f_ctx[b, keep], batch.s_test[b], x_test,
            params, {name: value[b] for name, value in per_task.items()},
        ))
    mean = torch.stack([m for m, _ in moments])  # [B, Lt, 1]
    std = torch.stack([s for _, s in moments])
    return Normal(mean.to(torch.float32), std.to(torch.float32))


def _task_posterior(s_ctx: Tensor, x_ctx: Tensor | None, f_ctx: Tensor, s_test: Tensor,
                    x_test: Tensor | None, params: GPParams,
                    own: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Predictive mean and std ``[Lt, 1]`` (float64) of one task from its valid context.

    Args:
        s_ctx: Valid context locations ``[k, Ds]`` (``k`` may be 0).
        x_ctx: Their covariates ``[k, Dx]`` or ``None``.
        f_ctx: Their noisy values ``[k, 1]``.
        s_test: Test locations ``[Lt, Ds]``.
        x_test: Test covariates ``[Lt, Dx]`` or ``None``.
        params: Shared settings (kernel, jitter, x_var, test_noise).
        own: This task's ``var``, ``lengthscale`` and ``noise`` (0-d float64).
    """
    kernel = get_kernel(params.kernel)

    def cov(s_a: Tensor, x_a: Tensor | None, s_b: Tensor, x_b: Tensor | None) -> Tensor:
        k = kernel(s_a.double()[None], s_b.double()[None], own["var"][None],
                   own["lengthscale"][None], **params.kernel_kwargs)[0]
        if x_a is not None and x_b is not None:
            k = k + params.x_var * (x_a.double() @ x_b.double().mT)
        return k

    noise_var = own["noise"].square()
    k_cc = cov(s_ctx, x_ctx, s_ctx, x_ctx)  # [k, k]
    k_cc.diagonal().add_(params.jitter + noise_var)
    # Stationary kernels: k(s, s) is the same for every s, so one point gives it.
    prior_var = cov(s_test[:1], None, s_test[:1], None)[0, 0] + params.jitter
    if x_test is not None:
        prior_var = prior_var + params.x_var * x_test.double().square().sum(-1)
    if params.test_noise:
        prior_var = prior_var + noise_var
    return condition(k_cc, cov(s_ctx, x_ctx, s_test, x_test), prior_var, f_ctx.double())


def condition(k_cc: Tensor, k_ct: Tensor, prior_var: Tensor, residual: Tensor
              ) -> tuple[Tensor, Tensor]:
    """Gaussian conditioning: the predictive of test values given observed ones.

    Args:
        k_cc: Covariance of the observed values ``[k, k]`` (noise included), float64.
        k_ct: Covariance between observed and test values ``[k, Lt]``.
        prior_var: Prior variance of each test value ``[Lt]`` (or a scalar).
        residual: Observed values minus their prior mean ``[k, 1]``.

    Returns:
        Mean (add the test values' prior mean) and std, each ``[Lt, 1]``.
    """
    chol = torch.linalg.cholesky(k_cc)
    mean = k_ct.mT @ torch.cholesky_solve(residual, chol)  # [Lt, 1]
    v = torch.linalg.solve_triangular(chol, k_ct, upper=False)  # [k, Lt]
    var = (prior_var - v.square().sum(dim=0)).clamp_min(1e-12)  # [Lt]
    return mean, var.sqrt()[:, None]
