"""Priors over GP hyperparameters, reproducible under a ``torch.Generator``.

Each prior draws ``n`` values with :meth:`Prior.sample` as a float64 tensor ``[n]``. All
randomness comes from the ``generator`` argument (or torch's global generator when it is
``None``), so a seeded generator gives the same draws every time.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor


class Prior(ABC):
    """A distribution over one positive scalar hyperparameter."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` values as a float64 tensor ``[n]``."""


@dataclass(frozen=True)
class Fixed(Prior):
    """Point mass at ``value``."""

    value: float

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Return ``value`` repeated ``n`` times, ``[n]``; consumes no randomness."""
        return torch.full((n,), float(self.value), dtype=torch.float64)


@dataclass(frozen=True)
class Uniform(Prior):
    """Uniform on ``[lo, hi)``."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"Uniform prior needs lo < hi, got lo={self.lo}, hi={self.hi}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` values."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.lo + (self.hi - self.lo) * u


@dataclass(frozen=True)
class LogUniform(Prior):
    """Log-uniform on ``[lo, hi)``: ``log x`` is uniform on ``[log lo, log hi)``."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi:
            raise ValueError(f"LogUniform prior needs 0 < lo < hi, got lo={self.lo}, hi={self.hi}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` values."""
        log_lo, log_hi = math.log(self.lo), math.log(self.hi)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.exp(log_lo + (log_hi - log_lo) * u)


@dataclass(frozen=True)
class _PositivePair(Prior):
    """A prior with two positive parameters ``a`` and ``b``."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0):
            raise ValueError(f"{type(self).__name__} prior needs a > 0 and b > 0, got "
                             f"a={self.a}, b={self.b}")


@dataclass(frozen=True)
class Beta(_PositivePair):
    """Beta(``a``, ``b``) on ``(0, 1)``, drawn as ``X / (X + Y)`` with Gamma variates."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` values."""
        x = _sample_gamma(self.a, n, generator)
        y = _sample_gamma(self.b, n, generator)
        return x / (x + y)


@dataclass(frozen=True)
class Gamma(_PositivePair):
    """Gamma with shape ``a`` and rate ``b`` (mean ``a / b``)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` values."""
        return _sample_gamma(self.a, n, generator) / self.b


@dataclass(frozen=True)
class InvGamma(_PositivePair):
    """Inverse gamma with shape ``a`` and scale ``b``: ``b / X`` with ``X ~ Gamma(a, 1)``.

    Its mean is ``b / (a − 1)`` for ``a > 1``.
    """

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` values."""
        return self.b / _sample_gamma(self.a, n, generator)


def _sample_gamma(shape: float, n: int, generator: torch.Generator | None) -> Tensor:
    """Gamma(``shape``, 1) variates ``[n]`` by Marsaglia–Tsang rejection (float64).

    ``torch.distributions.Gamma`` cannot take a generator, hence this sampler. Shapes
    below 1 use the boost ``Gamma(k) = Gamma(k + 1) · U^(1/k)``.
    """
    k = shape + 1.0 if shape < 1.0 else shape
    d = k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel() > 0:
        z = torch.randn(todo.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(todo.numel(), generator=generator, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        bound = 0.5 * z.square() + d - d * v + d * v.clamp_min(1e-300).log()
        accept = (v > 0) & (u.log() < bound)
        out[todo[accept]] = d * v[accept]
        todo = todo[~accept]
    if shape < 1.0:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / shape)
    return out


_PAIRS = {"uniform": Uniform, "loguniform": LogUniform, "beta": Beta, "gamma": Gamma,
          "invgamma": InvGamma}


def prior_from_config(config: Mapping[str, Any]) -> Prior:
    """Build a prior from a one-key mapping.

    Accepted forms: ``{"fixed": v}``, ``{"uniform": [lo, hi]}``,
    ``{"loguniform": [lo, hi]}``, ``{"beta": [a, b]}``, ``{"gamma": [shape, rate]}``,
    ``{"invgamma": [shape, scale]}``.

    Raises:
        ValueError: If ``config`` is not a one-key mapping of a known prior with
            parameters of the right form and range.
    """
    known = ["fixed", *_PAIRS]
    if not isinstance(config, Mapping) or len(config) != 1:
        raise ValueError(
            f"prior config must be a mapping with exactly one key of {known}, got {config!r}"
        )
    name, params = next(iter(config.items()))
    if name == "fixed":
        if isinstance(params, bool) or not isinstance(params, (int, float)):
            raise ValueError(f"'fixed' prior needs one number, got {params!r}")
        return Fixed(float(params))
    if name not in _PAIRS:
        raise ValueError(f"unknown prior {name!r}; choose one of {known}")
    if (
        isinstance(params, (str, bytes))
        or not hasattr(params, "__len__")
        or len(params) != 2
        or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in params)
    ):
        raise ValueError(f"{name!r} prior needs a pair of numbers [p1, p2], got {params!r}")
    return _PAIRS[name](float(params[0]), float(params[1]))


def prior_to_config(prior: Prior) -> dict[str, Any]:
    """Inverse of :func:`prior_from_config`."""
    if isinstance(prior, Fixed):
        return {"fixed": prior.value}
    name = next(key for key, cls in _PAIRS.items() if type(prior) is cls)
    return {name: [getattr(prior, f.name) for f in fields(prior)]}
