"""Likelihood heads: final token → predictive distribution per test point."""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from bsatnp.models.layers import MLP

Likelihood = Literal["gaussian", "categorical"]
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)


class GaussianHead(nn.Module):
    """MLP → ``(μ, raw)``; ``σ = min_std + (1 − min_std)·softplus(raw)``.

    Args:
        dims: MLP widths ``(E, hidden..., 2·Df)``.
        min_std: Lower bound of the predictive standard deviation.
        activation: After every hidden layer, ``"gelu"`` or ``"relu"``.
    """

    def __init__(self, dims: tuple[int, ...], min_std: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        if dims[-1] % 2:
            raise ValueError(f"GaussianHead needs an even output width 2·Df, got {dims[-1]}")
        self.mlp = MLP(dims, activation=activation)
        self.min_std = min_std

    def forward(self, z: Tensor) -> Normal:
        """Tokens ``[B, Lt, E]`` → ``Normal`` with mean and stddev ``[B, Lt, Df]``."""
        mu, raw = self.mlp(z).chunk(2, dim=-1)
        std = self.min_std + (1.0 - self.min_std) * F.softplus(raw)
        return Normal(mu, std, validate_args=False)


class CategoricalHead(nn.Module):
    """MLP → class logits ``[B, Lt, C]``; targets are one-hot ``f [B, Lt, C]``.

    Args:
        dims: MLP widths ``(E, hidden..., C)``.
        activation: After every hidden layer, ``"gelu"`` or ``"relu"``.
    """

    def __init__(self, dims: tuple[int, ...], activation: str = "gelu") -> None:
        super().__init__()
        self.mlp = MLP(dims, activation=activation)

    def forward(self, z: Tensor) -> Categorical:
        """Tokens ``[B, Lt, E]`` → ``Categorical`` over ``C`` classes, batch shape ``[B, Lt]``."""
        return Categorical(logits=self.mlp(z), validate_args=False)


def check_likelihood(likelihood: str) -> None:
    """Raise ``ValueError`` unless ``likelihood`` is one of :data:`LIKELIHOODS`."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def likelihood_head(likelihood: str, dims: tuple[int, ...], dim_f: int, min_std: float = 0.0,
                    activation: str = "gelu") -> nn.Module:
    """The head of a likelihood: MLP widths ``(E, hidden...)`` then the outputs it needs.

    Gaussian: ``2·Df`` outputs (mean and raw std) → :class:`GaussianHead`; categorical:
    ``Df = C`` class logits → :class:`CategoricalHead`.
    """
    check_likelihood(likelihood)
    if likelihood == "categorical":
        return CategoricalHead((*dims, dim_f), activation)
    return GaussianHead((*dims, 2 * dim_f), min_std, activation)
