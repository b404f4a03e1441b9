"""The training loss: negative log-likelihood of the test targets under the predictive."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution


def pointwise_nll(dist: Distribution, f: Tensor) -> Tensor:
    """Negative log-likelihood per test point ``[B, Lt]``.

    Gaussian: ``−log N(f | μ, σ)`` averaged over the ``Df`` value dims. Categorical:
    cross-entropy with the one-hot target ``f [B, Lt, C]``.
    """
    if isinstance(dist, Categorical):
        return -dist.log_prob(f.argmax(dim=-1))
    return -dist.log_prob(f).mean(dim=-1)


def masked_nll(dist: Distribution, f: Tensor, mask: Tensor) -> Tensor:
    """Mean NLL over the valid test points ``mask [B, Lt]`` of the whole batch (scalar)."""
    f = torch.where(mask[..., None], f, torch.zeros_like(f))  # masked targets may be NaN
    per_point = torch.where(mask, pointwise_nll(dist, f), 0.0)
    return per_point.sum() / mask.sum().clamp_min(1)
