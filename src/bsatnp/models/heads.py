"""Likelihood heads: final token → predictive distribution per test point.

Every model family ends in one of these, chosen by its config's ``likelihood``: an MLP to
the raw parameters a :class:`~bsatnp.likelihoods.LikelihoodFamily` reads
(:class:`DistributionHead`), or to class logits (:class:`CategoricalHead`).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from bsatnp.likelihoods import LIKELIHOODS, Likelihood, likelihood_family
from bsatnp.models.layers import MLP
from bsatnp.precision import full_precision

__all__ = ["LIKELIHOODS", "CategoricalHead", "DistributionHead", "Likelihood",
           "check_likelihood", "likelihood_head"]


class DistributionHead(nn.Module):
    """MLP → the raw parameters of a likelihood family → its distribution over ``[B, Lt, Df]``.

    The Gaussian's raw outputs are ``(μ, raw σ)`` with ``σ = min_std + (1 − min_std)·
    softplus(raw σ)`` (the parameter layout of every checkpoint before other likelihoods).

    Args:
        likelihood: A registered family's name (:mod:`bsatnp.likelihoods`).
        dims: MLP widths ``(E, hidden...)``; the last layer gives ``Df·outputs``.
        dim_f: Value features ``Df``.
        min_std: Lower bound of σ (Gaussian families).
        activation: After every hidden layer, ``"gelu"`` or ``"relu"``.
    """

    def __init__(self, likelihood: str, dims: tuple[int, ...], dim_f: int,
                 min_std: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        self.family = likelihood_family(likelihood)
        self.mlp = MLP((*dims, dim_f * self.family.outputs), activation=activation)
        self.min_std = min_std

    def forward(self, z: Tensor, offset: Tensor | None = None) -> Distribution:
        """Tokens ``[B, Lt, E]`` → the predictive at exposures or trials ``offset``.

        ``offset [B, Lt, Df]`` (``None``: 1) is ignored by a family that reads none. Computed
        in float32 under autocast (bf16 training): the loss reads these parameters.
        """
        with full_precision(z.device.type):
            return self.family.distribution(self.mlp(z.float()), self.min_std, offset)


class CategoricalHead(nn.Module):
    """MLP → class logits ``[B, Lt, C]``; targets are one-hot ``f [B, Lt, C]``.

    Args:
        dims: MLP widths ``(E, hidden..., C)``.
        activation: After every hidden layer, ``"gelu"`` or ``"relu"``.
    """

    def __init__(self, dims: tuple[int, ...], activation: str = "gelu") -> None:
        super().__init__()
        self.mlp = MLP(dims, activation=activation)

    def forward(self, z: Tensor, offset: Tensor | None = None) -> Categorical:
        """Tokens ``[B, Lt, E]`` → ``Categorical`` over ``C`` classes, batch shape ``[B, Lt]``.

        A classifier reads no ``offset``. Float32 under autocast, as :class:`DistributionHead`.
        """
        with full_precision(z.device.type):
            return Categorical(logits=self.mlp(z.float()), validate_args=False)


def check_likelihood(likelihood: str) -> None:
    """Raise ``ValueError`` unless ``likelihood`` is one of :data:`LIKELIHOODS`."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def likelihood_head(likelihood: str, dims: tuple[int, ...], dim_f: int, min_std: float = 0.0,
                    activation: str = "gelu") -> nn.Module:
    """The head of a likelihood: MLP widths ``(E, hidden...)`` then the outputs it needs.

    Categorical: ``Df = C`` class logits → :class:`CategoricalHead`; any other: ``Df``
    times the family's parameter count → :class:`DistributionHead`.
    """
    check_likelihood(likelihood)
    if likelihood == "categorical":
        return CategoricalHead((*dims, dim_f), activation)
    return DistributionHead(likelihood, dims, dim_f, min_std, activation)
