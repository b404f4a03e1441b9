"""Likelihoods: the pieces a model's head ends in, shared by every model family.

A :class:`LikelihoodFamily` turns the raw outputs of a head (``outputs`` numbers per value
dimension, ``[..., Df·outputs]``) into a ``torch.distributions`` object with event shape
``()`` over ``[..., Df]``, and answers what scoring and the user's outputs need of it: the
cumulative distribution (:meth:`~LikelihoodFamily.cdf`), quantiles
(:meth:`~LikelihoodFamily.quantile`), the continuous ranked probability score
(:meth:`~LikelihoodFamily.crps`), mean, standard deviation, samples and the log-density.
Families are registered by name with :func:`register_likelihood`:

=====================  ======================================  =====================
name                   parameters (link)                       support
=====================  ======================================  =====================
``gaussian``           μ, σ = m + (1 − m)·softplus             real
``student_t``          μ, σ (softplus), ν = 2 + softplus       real (heavy tails)
``gaussian_mixture``   3 weights (softmax), μ_k, σ_k           real
``poisson``            λ = exposure·exp(η)                     counts 0, 1, ...
``negative_binomial``  mean = exposure·exp(η), r (softplus)    counts
``zip``, ``zinb``      π (sigmoid) zeros, then as above        counts, extra zeros
``bernoulli``          p (sigmoid)                             0 / 1
``binomial``           p (sigmoid), ``offset`` = trials n      0, ..., n
``beta``               mean (sigmoid), precision (softplus)    (0, 1)
=====================  ======================================  =====================

``offset`` is the exposure of a count (rate × exposure) or the number of trials of a
binomial, per value (``None``: 1). The CRPS is in closed form for the Gaussian, Student-t,
mixture and Bernoulli; elsewhere it is the integral of the quantile (pinball) score over
levels, ``CRPS = 2 ∫₀¹ QS_u du``, by the midpoint rule on :data:`CRPS_LEVELS` levels.
Edges of a support: counts are read as given (a caller checks that they are counts); the
Beta's density is evaluated with the value clamped into ``[ε, 1 − ε]`` (:data:`UNIT_EPS`),
so observed 0 and 1 proportions keep finite gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Distribution,
    MixtureSameFamily,
    NegativeBinomial,
    Normal,
    Poisson,
    StudentT,
)

Likelihood = Literal["gaussian", "student_t", "gaussian_mixture", "poisson",
                     "negative_binomial", "zip", "zinb", "bernoulli", "binomial", "beta",
                     "categorical"]
"""Every likelihood a model config may name (``categorical``: one-hot classes)."""
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)

CRPS_LEVELS = 200
"""Levels of the midpoint rule of the quantile-score integral of the CRPS."""
UNIT_EPS = 1e-6
"""How close to 0 and 1 the Beta's density is evaluated."""
MAX_LOG_RATE = 30.0
"""The log link's argument is clamped here (a rate of 1e13): no overflow to inf."""


class LikelihoodFamily:
    """What every likelihood answers (module doc).

    Subclasses set ``outputs`` and implement :meth:`distribution` and :meth:`cdf`.
    """

    name: ClassVar[str]
    outputs: ClassVar[int]
    """Raw head outputs per value dimension."""
    discrete: ClassVar[bool] = False
    """Integer-valued (counts, 0/1): quantiles are integers."""
    bounds: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    """The support's closure."""
    offset: ClassVar[Literal["exposure", "trials"] | None] = None
    """What the family's ``offset`` means, or ``None`` where it reads none."""

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs ``[..., Df·outputs]``.

        Args:
            raw: The head's outputs, the ``outputs`` parameters of each value dimension
                side by side in blocks of ``Df``.
            min_std: Gaussian families: the lower bound of σ.
            offset: Exposure (counts) or trials (binomial) ``[..., Df]``; ``None``: 1.
        """
        raise NotImplementedError

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        raise NotImplementedError

    def quantile(self, dist: Distribution, level: float | Tensor) -> Tensor:
        """The ``level`` quantile, ``inf{y : F(y) ≥ level}`` (bisection on :meth:`cdf`)."""
        mean, std = dist.mean.double(), dist.stddev.double()
        level = torch.as_tensor(level, dtype=torch.float64).expand_as(mean)
        lo, hi = self.bounds
        low = torch.full_like(mean, lo) if math.isfinite(lo) else mean - 8 * std - 1
        high = torch.full_like(mean, hi) if math.isfinite(hi) else mean + 8 * std + 1
        for _ in range(64):  # widen an unbounded side until it brackets the level
            short = (self.cdf(dist, high) < level) if not math.isfinite(hi) else None
            wide = ((self.cdf(dist, low) >= level) & (level > 0)) if not math.isfinite(lo) \
                else None
            if not any(bool(side.any()) for side in (short, wide) if side is not None):
                break
            step = 2 * (high - low)
            if short is not None:
                high = torch.where(short, high + step, high)
            if wide is not None:
                low = torch.where(wide, low - step, low)
        if self.discrete:
            low, high = low.floor() - 1, high.ceil()
            while bool((high - low > 1).any()):
                middle = ((low + high) / 2).floor()
                above = self.cdf(dist, middle) >= level
                high, low = torch.where(above, middle, high), torch.where(above, low, middle)
            return high.clamp_min(0.0 if math.isfinite(lo) else -math.inf)
        for _ in range(80):
            middle = (low + high) / 2
            above = self.cdf(dist, middle) >= level
            high, low = torch.where(above, middle, high), torch.where(above, low, middle)
        return (low + high) / 2

    def crps(self, dist: Distribution, y: Tensor) -> Tensor:
        """The CRPS of ``y`` elementwise (float64; lower is better).

        Counts: ``Σ_k (F(k) − 1{y ≤ k})²`` over ``k = 0, 1, ...`` up to where ``F`` is 1
        within 1e-12 (:func:`count_crps`); continuous families without a closed form: the
        quantile-score integral (module doc).
        """
        if self.discrete:
            return count_crps(dist, y)
        levels = (torch.arange(CRPS_LEVELS, dtype=torch.float64) + 0.5) / CRPS_LEVELS
        y = y.double()
        total = torch.zeros_like(y)
        for level in levels:
            q = self.quantile(dist, level)
            total += ((y <= q).double() - level) * (q - y)
        return 2 * total / CRPS_LEVELS


_LIKELIHOOD_FAMILIES: dict[str, LikelihoodFamily] = {}

_Family = TypeVar("_Family", bound=type[LikelihoodFamily])


def register_likelihood(name: str) -> Callable[[_Family], _Family]:
    """Class decorator: the likelihood family ``name`` (one instance serves every model)."""

    def register(cls: _Family) -> _Family:
        if name not in LIKELIHOODS:
            raise ValueError(f"add {name!r} to likelihoods.Likelihood before registering it")
        cls.name = name
        _LIKELIHOOD_FAMILIES[name] = cls()
        return cls

    return register


def likelihood_family(name: str) -> LikelihoodFamily:
    """The registered family ``name`` (``categorical`` has none: its head is its own).

    Raises:
        ValueError: On a name that is not a registered likelihood.
    """
    if name not in _LIKELIHOOD_FAMILIES:
        raise ValueError(f"likelihood must be one of {tuple(_LIKELIHOOD_FAMILIES)}, "
                         f"got {name!r}")
    return _LIKELIHOOD_FAMILIES[name]


def offset_of(likelihood: str) -> Literal["exposure", "trials"] | None:
    """What the offset ``likelihood`` reads means, or ``None`` (``categorical`` reads none)."""
    return None if likelihood == "categorical" else likelihood_family(likelihood).offset


def value_features(f: Tensor, offset: Tensor | None) -> Tensor:
    """What a model embeds of observed values whose likelihood reads an offset.

    ``[f / offset, log offset]`` side by side ``[..., 2·Df]``: the rate (or share of
    trials) and how much exposure (or how many trials) it rests on; ``None`` offsets are 1.
    """
    if offset is None:
        return torch.cat([f, torch.zeros_like(f)], -1)
    offset = offset.to(f.dtype)
    return torch.cat([f / offset, offset.log()], -1)


def likelihood_names() -> tuple[str, ...]:
    """The registered families (every likelihood but ``categorical``)."""
    return tuple(_LIKELIHOOD_FAMILIES)


# ------------------------------------------------------------------------ helpers
def _split(raw: Tensor, outputs: int) -> list[Tensor]:
    """The ``outputs`` parameter blocks ``[..., Df]`` of raw outputs ``[..., Df·outputs]``."""
    if raw.shape[-1] % outputs:
        raise ValueError(f"the head gives {raw.shape[-1]} outputs, not a multiple of "
                         f"{outputs} parameters per value")
    return list(raw.chunk(outputs, dim=-1))


def _positive(raw: Tensor) -> Tensor:
    """``softplus(raw) + 1e-6``: a dispersion or precision that is never 0."""
    return F.softplus(raw) + 1e-6


def _scale(raw: Tensor, min_std: float) -> Tensor:
    """``min_std + (1 − min_std)·softplus(raw)``: a scale bounded below by ``min_std``."""
    return min_std + (1.0 - min_std) * F.softplus(raw)


def _rate(raw: Tensor, offset: Tensor | None) -> Tensor:
    """``exposure·exp(η)`` (log link; ``η`` clamped at :data:`MAX_LOG_RATE`)."""
    rate = raw.clamp(max=MAX_LOG_RATE).exp()
    return rate if offset is None else rate * offset


def _counts(y: Tensor) -> Tensor:
    """``y`` floored onto the counts (negative values stay negative)."""
    return y.double().floor()


def count_crps(dist: Distribution, y: Tensor, chunk: int = 4096) -> Tensor:
    """``Σ_k (F(k) − 1{y ≤ k})²`` of a distribution over counts.

    Summed up to 12 standard deviations above the largest mean (and above every ``y``),
    beyond which the terms are negligible.
    """
    y = y.double()
    flat_y = y.reshape(-1)
    out = torch.empty_like(flat_y)
    top = float((dist.mean.double() + 12 * dist.stddev.double()).max()) + 20
    top = int(max(top, float(flat_y.max()) + 1))
    ks = torch.arange(top + 1, dtype=torch.float64)
    for start in range(0, len(flat_y), chunk):
        stop = min(start + chunk, len(flat_y))
        index = torch.arange(start, stop)
        part = _take(dist, index, y.shape)
        pmf = part.log_prob(ks[:, None].to(part.mean.dtype)).double().exp()  # [K, n]
        cdf = torch.nan_to_num(pmf, nan=0.0).cumsum(0).clamp(max=1.0)  # NaN: k beyond n
        step = (flat_y[start:stop][None] <= ks[:, None]).double()
        out[start:stop] = (cdf - step).square().sum(0)
    return out.reshape(y.shape)


def _take(dist: Distribution, index: Tensor, shape: torch.Size) -> Distribution:
    """The elements ``index`` of the flattened batch (``shape``) of a count distribution."""

    def pick(value: Tensor) -> Tensor:
        return value.expand(shape).reshape(-1)[index]

    if isinstance(dist, _ZeroInflated):
        return _ZeroInflated(pick(dist.zero), _take(dist.base, index, shape))
    if isinstance(dist, Poisson):
        return Poisson(pick(dist.rate), validate_args=False)
    if isinstance(dist, (NegativeBinomial, Binomial)):
        return type(dist)(pick(dist.total_count), logits=pick(dist.logits),
                          validate_args=False)
    raise TypeError(f"not a count distribution: {type(dist).__name__}")


def betainc(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """The regularised incomplete beta function ``I_x(a, b)`` (float64).

    Lentz's continued fraction, on the side of ``(a + 1) / (a + b + 2)`` where it converges
    fast (``I_x(a, b) = 1 − I_{1−x}(b, a)`` on the other); 0 below ``x = 0``, 1 above 1.
    """
    a, b, x = torch.broadcast_tensors(a.double(), b.double(), x.double())
    flip = x > (a + 1) / (a + b + 2)
    a, b, x = torch.where(flip, b, a), torch.where(flip, a, b), torch.where(flip, 1 - x, x)
    inside = (x > 0) & (x < 1)
    xs = torch.where(inside, x, 0.5)
    log_front = (a * xs.log() + b * torch.log1p(-xs) - torch.lgamma(a) - torch.lgamma(b)
                 + torch.lgamma(a + b) - a.log())
    tiny = 1e-300
    c = torch.ones_like(xs)
    d = 1 - (a + b) * xs / (a + 1)
    d = 1 / torch.where(d.abs() < tiny, tiny, d)
    h = d.clone()
    for m in range(1, 301):
        for numerator in (m * (b - m) * xs / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * xs / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / torch.where(d.abs() < tiny, tiny, d)
            c = 1 + numerator / c
            c = torch.where(c.abs() < tiny, tiny, c)
            h = h * d * c
    value = torch.where(inside, log_front.exp() * h, (x >= 1).double())
    return torch.where(flip, 1 - value, value)


# ----------------------------------------------------------------------- families
@register_likelihood("gaussian")
class GaussianFamily(LikelihoodFamily):
    """``N(μ, σ²)``, ``σ = min_std + (1 − min_std)·softplus(raw)``."""

    outputs = 2

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        mu, scale = _split(raw, 2)
        return Normal(mu, _scale(scale, min_std), validate_args=False)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        return torch.special.ndtr((y.double() - dist.mean.double()) / dist.stddev.double())

    def quantile(self, dist: Distribution, level: float | Tensor) -> Tensor:
        """The ``level`` quantile (closed form)."""
        level = torch.as_tensor(level, dtype=torch.float64)
        return dist.mean.double() + dist.stddev.double() * torch.special.ndtri(level)

    def crps(self, dist: Distribution, y: Tensor) -> Tensor:
        """The CRPS of ``y`` elementwise (closed form)."""
        std = dist.stddev.double()
        z = (y.double() - dist.mean.double()) / std
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return std * (z * (2 * torch.special.ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


@register_likelihood("student_t")
class StudentTFamily(LikelihoodFamily):
    """Student-t with location μ, scale σ and ``ν = 2 + softplus`` degrees of freedom.

    ``ν > 2``: the variance, and so the std, exist.
    """

    outputs = 3

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        mu, scale, df = _split(raw, 3)
        return StudentT(2.0 + F.softplus(df) + 1e-3, mu,
                        _scale(scale, min_std), validate_args=False)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        nu = dist.df.double()
        t = (y.double() - dist.loc.double()) / dist.scale.double()
        tail = 0.5 * betainc(nu / 2, torch.full_like(nu, 0.5), nu / (nu + t * t))
        return torch.where(t > 0, 1 - tail, tail)

    def crps(self, dist: Distribution, y: Tensor) -> Tensor:
        """Closed form (Jordan, Krüger & Lerch 2019, scoringRules)."""
        nu, scale = dist.df.double(), dist.scale.double()
        z = (y.double() - dist.loc.double()) / scale
        log_pdf = (torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2) - 0.5 * torch.log(nu * math.pi)
                   - (nu + 1) / 2 * torch.log1p(z * z / nu))
        cdf = self.cdf(dist, y)

        def log_beta(p: Tensor, q: Tensor) -> Tensor:
            return torch.lgamma(p) + torch.lgamma(q) - torch.lgamma(p + q)

        half = torch.full_like(nu, 0.5)
        last = 2 * nu.sqrt() * torch.exp(log_beta(half, nu - 0.5) - 2 * log_beta(half, nu / 2)) \
            / (nu - 1)
        return scale * (z * (2 * cdf - 1) + 2 * log_pdf.exp() * (nu + z * z) / (nu - 1) - last)


@register_likelihood("gaussian_mixture")
class GaussianMixtureFamily(LikelihoodFamily):
    """A mixture of :attr:`components` Gaussians per value: weights (softmax), means, stds."""

    components: ClassVar[int] = 3
    outputs = 3 * components

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        parts = _split(raw, self.outputs)
        k = self.components
        logits = torch.stack(parts[:k], -1)
        means = torch.stack(parts[k:2 * k], -1)
        stds = _scale(torch.stack(parts[2 * k:], -1), min_std)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False),
                                 Normal(means, stds, validate_args=False), validate_args=False)

    @staticmethod
    def _parts(dist: Distribution) -> tuple[Tensor, Tensor, Tensor]:
        components = dist.component_distribution
        return (dist.mixture_distribution.probs.double(), components.mean.double(),
                components.stddev.double())

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        w, mu, sd = self._parts(dist)
        return (w * torch.special.ndtr((y.double()[..., None] - mu) / sd)).sum(-1)

    def crps(self, dist: Distribution, y: Tensor) -> Tensor:
        """``E|X − y| − ½E|X − X'|``, both in closed form for Gaussian mixtures."""
        w, mu, sd = self._parts(dist)

        def abs_mean(m: Tensor, s: Tensor) -> Tensor:  # E|Z|, Z ~ N(m, s²)
            return (s * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (m / s) ** 2)
                    + m * (1 - 2 * torch.special.ndtr(-m / s)))

        first = (w * abs_mean(y.double()[..., None] - mu, sd)).sum(-1)
        pair_m = mu[..., :, None] - mu[..., None, :]
        pair_s = (sd[..., :, None] ** 2 + sd[..., None, :] ** 2).sqrt()
        second = (w[..., :, None] * w[..., None, :] * abs_mean(pair_m, pair_s)).sum((-1, -2))
        return first - 0.5 * second


@register_likelihood("poisson")
class PoissonFamily(LikelihoodFamily):
    """Poisson counts with rate ``exposure·exp(η)``."""

    outputs = 1
    discrete = True
    bounds = (0.0, math.inf)
    offset = "exposure"

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        return Poisson(_rate(raw, offset), validate_args=False)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        k = _counts(y)
        value = torch.special.gammaincc(k.clamp_min(0) + 1, dist.rate.double())
        return torch.where(k < 0, 0.0, value)


@register_likelihood("negative_binomial")
class NegativeBinomialFamily(LikelihoodFamily):
    """Counts with mean ``μ = exposure·exp(η)`` and dispersion ``r`` (softplus).

    The variance is ``μ + μ²/r``.
    """

    outputs = 2
    discrete = True
    bounds = (0.0, math.inf)
    offset = "exposure"

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        eta, dispersion = _split(raw, 2)
        mean, r = _rate(eta, offset), _positive(dispersion)
        return NegativeBinomial(r, logits=mean.log() - r.log(), validate_args=False)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        k = _counts(y)
        value = betainc(dist.total_count.double(), k.clamp_min(0) + 1, 1 - dist.probs.double())
        return torch.where(k < 0, 0.0, value)


_SCALAR = torch.Size()


class _ZeroInflated(Distribution):
    """``π·δ₀ + (1 − π)·base`` over counts."""

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, zero: Tensor, base: Distribution) -> None:
        self.zero, self.base = zero, base
        super().__init__(base.batch_shape, validate_args=False)

    @property
    def mean(self) -> Tensor:
        return (1 - self.zero) * self.base.mean

    @property
    def variance(self) -> Tensor:
        m, v = self.base.mean, self.base.variance
        return (1 - self.zero) * (v + m * m) - self.mean ** 2

    def log_prob(self, value: Tensor) -> Tensor:
        base = self.base.log_prob(value)
        zero = torch.logaddexp(self.zero.log(), torch.log1p(-self.zero) + base)
        return torch.where(value == 0, zero, torch.log1p(-self.zero) + base)

    def sample(self, sample_shape: torch.Size = _SCALAR) -> Tensor:
        counts = self.base.sample(sample_shape)
        keep = torch.rand_like(counts) >= self.zero.expand_as(counts)
        return torch.where(keep, counts, 0.0)


def _zero_cdf(zero: Tensor, base_cdf: Tensor, y: Tensor) -> Tensor:
    return torch.where(_counts(y) < 0, 0.0, zero.double() + (1 - zero.double()) * base_cdf)


class _ZeroInflatedFamily(LikelihoodFamily):
    """A structural zero with probability ``π``, else the ``base`` family.

    ``π`` is the sigmoid of the last raw output; the ones before it are ``base``'s.
    """

    base: ClassVar[LikelihoodFamily]
    discrete = True
    bounds = (0.0, math.inf)
    offset = "exposure"

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        *base, zero = _split(raw, self.outputs)
        return _ZeroInflated(torch.sigmoid(zero),
                             self.base.distribution(torch.cat(base, -1), offset=offset))

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y) = π + (1 − π)·F_base(y)`` for ``y >= 0`` (float64)."""
        return _zero_cdf(dist.zero, self.base.cdf(dist.base, y), y)


@register_likelihood("zip")
class ZeroInflatedPoissonFamily(_ZeroInflatedFamily):
    """Zero-inflated Poisson: ``π``, else Poisson with rate ``exposure·exp(η)``."""

    base = PoissonFamily()
    outputs = 2


@register_likelihood("zinb")
class ZeroInflatedNegativeBinomialFamily(_ZeroInflatedFamily):
    """Zero-inflated negative binomial: ``π``, else as ``negative_binomial``."""

    base = NegativeBinomialFamily()
    outputs = 3


@register_likelihood("bernoulli")
class BernoulliFamily(LikelihoodFamily):
    """Presence / absence: ``p = sigmoid(raw)``."""

    outputs = 1
    discrete = True
    bounds = (0.0, 1.0)

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        return Bernoulli(logits=raw, validate_args=False)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        y = y.double()
        return torch.where(y < 0, 0.0, torch.where(y < 1, 1 - dist.probs.double(), 1.0))

    def crps(self, dist: Distribution, y: Tensor) -> Tensor:
        """``(p − y)²`` (the Brier score) for ``y`` in {0, 1}."""
        return (dist.probs.double() - y.double()).square()


@register_likelihood("binomial")
class BinomialFamily(LikelihoodFamily):
    """Successes out of ``offset`` trials (``None``: 1) with ``p = sigmoid(raw)``."""

    outputs = 1
    discrete = True
    bounds = (0.0, math.inf)
    offset = "trials"

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        trials = torch.ones_like(raw) if offset is None else offset.to(raw.dtype)
        return Binomial(trials, logits=raw, validate_args=False)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        k, n = _counts(y), dist.total_count.double()
        value = betainc((n - k).clamp_min(1e-12), k.clamp_min(0) + 1, 1 - dist.probs.double())
        return torch.where(k < 0, 0.0, torch.where(k >= n, 1.0, value))


@register_likelihood("beta")
class BetaFamily(LikelihoodFamily):
    """Proportions in (0, 1): ``Beta(m·φ, (1 − m)·φ)``.

    Mean ``m = sigmoid``, precision ``φ = softplus``; values are read clamped into
    ``[ε, 1 − ε]`` (module doc).
    """

    outputs = 2
    bounds = (0.0, 1.0)

    def distribution(self, raw: Tensor, min_std: float = 0.0,
                     offset: Tensor | None = None) -> Distribution:
        """The predictive from raw head outputs (:meth:`LikelihoodFamily.distribution`)."""
        mean, precision = _split(raw, 2)
        m, phi = torch.sigmoid(mean), _positive(precision)
        return _ClampedBeta(m * phi, (1 - m) * phi)

    def cdf(self, dist: Distribution, y: Tensor) -> Tensor:
        """``P(Y ≤ y)`` elementwise (float64)."""
        y = y.double()
        value = betainc(dist.concentration1.double(), dist.concentration0.double(),
                        y.clamp(0, 1))
        return torch.where(y <= 0, 0.0, torch.where(y >= 1, 1.0, value))


    def crps(self, dist: Distribution, y: Tensor) -> Tensor:
        """``E|X − y| − ½E|X − X'|`` in closed form (``y`` clamped into [0, 1]).

        That is ``y(2F(y) − 1) + μ(1 − 2F_{α+1,β}(y)) − 2μ·B(2α, 2β) / (α·B(α, β)²)``.
        """
        a, b = dist.concentration1.double(), dist.concentration0.double()
        y = y.double().clamp(0, 1)
        mean = a / (a + b)
        log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        log_beta2 = torch.lgamma(2 * a) + torch.lgamma(2 * b) - torch.lgamma(2 * a + 2 * b)
        return (y * (2 * betainc(a, b, y) - 1) + mean * (1 - 2 * betainc(a + 1, b, y))
                - 2 * mean * torch.exp(log_beta2 - 2 * log_beta) / a)


class _ClampedBeta(Beta):
    """A Beta whose log-density reads values clamped into ``[ε, 1 − ε]``."""

    def __init__(self, concentration1: Tensor, concentration0: Tensor) -> None:
        super().__init__(concentration1, concentration0, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value.clamp(UNIT_EPS, 1 - UNIT_EPS))
