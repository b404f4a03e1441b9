"""Training-free local averages: inverse distance, k nearest neighbours, persistence.

Each is a :class:`~bsatnp.models.base.NeuralProcess` family with no trainable weights, so
``evaluate``, :class:`~bsatnp.predictor.Predictor`, checkpoints and the CLI take it as they
take any model. At each test point it forms weights ``w`` over the valid context points
that sum to one, from coordinate differences only (so predictions are invariant to
translating all locations), and predicts

* Gaussian: ``μ = Σ_i w_i f_i`` and ``σ = std_scale · sqrt(Σ_i w_i (f_i − μ)² + min_std²)``,
  ``std_scale`` (1 by default) fitted by :meth:`LocalAverage.calibrate`;
* categorical (``f`` one-hot over ``dim_f`` classes): the weighted class shares, with
  ``smoothing`` spread evenly over the classes, ``p = (Σ_i w_i f_i + α) / (1 + C·α)``;
* ``poisson`` (counts): the rate ``λ = Σ_i w_i f_i / e_i`` of the context's counts over
  their exposures, at the target's exposure, ``Poisson(e·λ)``;
* ``binomial`` and ``bernoulli``: the share ``p = (Σ_i w_i f_i / n_i + α) / (1 + 2α)`` of
  successes among the trials, ``Binomial(n, p)`` at the target's trials.

:func:`baseline_likelihood` names the one a task of another family is met with.

Persistence is the latest value at the nearest observed location. Test points are processed
in chunks, so memory is ``O(chunk_size · Lc)`` per task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Normal

from bsatnp.batch import Batch
from bsatnp.config import check_literals
from bsatnp.likelihoods import likelihood_family, offset_of
from bsatnp.models.base import FamilyConfig, NeuralProcess, register_family


@dataclass(frozen=True)
class LocalAverageConfig(FamilyConfig):
    """What every local average is built from.

    Attributes:
        dim_s: Location features ``Ds`` (>= 1: the weights need locations).
        dim_t: Time features ``Dt`` (0: no ``t`` role; persistence reads it when given).
        dim_f: Value features ``Df`` (classes for a categorical model).
        likelihood: ``gaussian``, ``categorical``, ``poisson``, ``binomial`` or
            ``bernoulli``.
        min_std: Gaussian: floor added (in quadrature) to the local standard deviation.
        smoothing: Categorical: probability mass ``α`` added to every class.
        chunk_size: Test points per chunk.
    """

    dim_s: int = 2
    dim_t: int = 0
    dim_f: int = 1
    likelihood: Literal["gaussian", "categorical", "poisson", "binomial",
                        "bernoulli"] = "gaussian"
    min_std: float = 0.01
    smoothing: float = 0.01
    chunk_size: int = 256

    def __post_init__(self) -> None:
        check_literals(self)
        if self.dim_s < 1 or self.dim_t < 0 or self.dim_f < 1:
            raise ValueError("a local average needs dim_s >= 1, dim_t >= 0 and dim_f >= 1, "
                             f"got {self.dim_s}, {self.dim_t}, {self.dim_f}")
        for name in ("min_std", "smoothing", "chunk_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class IDWConfig(LocalAverageConfig):
    """Inverse-distance weighting; ``power`` is the exponent ``p`` of ``w_i ∝ d_i^(−p)``."""

    power: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")


@dataclass(frozen=True)
class KNearestConfig(LocalAverageConfig):
    """The mean of the ``k`` nearest valid context points."""

    k: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class PersistenceConfig(LocalAverageConfig):
    """The latest value at the nearest location (``min_std``: the std before calibration)."""

    dim_t: int = 1
    min_std: float = 0.1


class LocalAverage(NeuralProcess):
    """Base of the local averages: weights from squared distances → the predictive.

    Subclasses set ``config_class`` and implement :meth:`weights`. The one state is the
    buffer ``std_scale`` (saved in checkpoints). Config fields may be given as keywords:
    ``IDW(power=3.0, dim_f=2)``.
    """

    config_class: ClassVar[type[LocalAverageConfig]] = LocalAverageConfig
    trainable: ClassVar[bool] = False

    def __init__(self, config: LocalAverageConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        self.chunk_size = self.config.chunk_size
        self.register_buffer("std_scale", torch.tensor(1.0))

    @property
    def min_std(self) -> float:
        """The Gaussian floor of the local standard deviation (before ``std_scale``)."""
        return float(self.config.min_std)

    @property
    def translation_invariant_roles(self) -> tuple[str, ...]:
        """Space (and time): the weights read coordinate differences only."""
        return self.roles

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """Normalised weights ``[B, Q, Lc]`` (zero on padding).

        Args:
            d2: Squared distances test → context ``[B, Q, Lc]``.
            valid: Valid context slots ``[B, 1, Lc]`` (bool; at least one per task).
            t_ctx: Context times ``[B, 1, Lc]`` when the model reads time, else ``None``.
        """
        raise NotImplementedError

    def predictive(self, batch: Batch) -> Distribution:
        """The predictive at the test points (module doc)."""
        first, second = self._averages(batch)
        if self.likelihood == "categorical":
            return Categorical(probs=first, validate_args=False)
        if self.likelihood == "gaussian":
            return Normal(first, self.std_scale * second, validate_args=False)
        family = likelihood_family(self.likelihood)
        if self.likelihood == "poisson":
            raw = first.clamp_min(1e-8).log()
        else:
            alpha = self.config.smoothing
            share = (first.clamp(0, 1) + alpha) / (1 + 2 * alpha)
            raw = share.log() - (-share).log1p()
        return family.distribution(raw, offset=batch.offset_test)

    def _averages(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Mean and ``std_scale``-free std ``[B, Lt, Df]`` of a checked, sanitised batch.

        A categorical model gives the class probabilities ``[B, Lt, C]`` and ``None``.
        """
        s_ctx, f_ctx = batch.s_ctx, batch.f_ctx[..., :self.width("f")]  # rates, not offsets
        valid = batch.context_mask()[:, None, :]  # [B, 1, Lc]
        t_ctx = None if "t" not in self.roles else batch.t_ctx[:, None, :, 0]  # [B, 1, Lc]
        categorical = self.likelihood == "categorical"
        firsts, seconds = [], []
        for s_test in batch.s_test.split(self.chunk_size, dim=1):  # [B, Q, Ds]
            d2 = (s_test[:, :, None, :] - s_ctx[:, None, :, :]).square().sum(-1)  # [B, Q, Lc]
            w = self.weights(d2, valid, t_ctx)
            mean = w @ f_ctx  # [B, Q, Df]
            if self.likelihood not in ("gaussian", "categorical"):
                firsts.append(mean)
                continue
            if categorical:
                alpha = self.config.smoothing
                firsts.append((mean.clamp_min(0) + alpha) / (1 + f_ctx.shape[-1] * alpha))
                continue
            spread = (f_ctx[:, None, :, :] - mean[:, :, None, :]).square()  # [B, Q, Lc, Df]
            var = (w[..., None] * spread).sum(dim=2)
            firsts.append(mean)
            seconds.append((var + self.min_std**2).sqrt())
        return torch.cat(firsts, dim=1), torch.cat(seconds, dim=1) if seconds else None

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> float:
        """Fit ``std_scale`` by maximum likelihood on the valid test points of ``batches``.

        For ``σ = c·σ₀`` the NLL is minimised by ``c² = mean(z²)``, ``z = (f − μ)/σ₀``.
        Any model but a Gaussian one has nothing to calibrate (it returns 1).

        Returns:
            The new ``std_scale``.

        Raises:
            ValueError: If a batch does not fit the model or lacks ``f_test``, or there is
                no valid test point.
        """
        total, count = 0.0, 0
        for batch in batches:
            self.check_batch(batch)
            batch.validate(required_roles=self.roles, need_f_test=True)
            if self.likelihood != "gaussian":
                continue
            mean, std = self._averages(batch.to(dtype=torch.float32).sanitized())
            mask = batch.test_mask()
            z2 = ((batch.f_test.double() - mean.double()) / std.double()).square()
            total += float(z2[mask].sum())
            count += int(mask.sum()) * z2.shape[-1]
        if self.likelihood != "gaussian":
            return float(self.std_scale)
        if count == 0:
            raise ValueError("calibrate needs at least one valid test point")
        self.std_scale.fill_((total / count) ** 0.5)
        return float(self.std_scale)


@register_family("idw")
class IDW(LocalAverage):
    """Inverse-distance weighting: ``w_i ∝ d_i^(−p)`` over the valid context points.

    A test point that coincides with context points takes their values only, so IDW
    interpolates exactly (σ = ``std_scale·min_std`` there for a single coincident point).
    """

    config_class = IDWConfig

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """Softmax of ``−(p/2)·log d²`` (no overflow), restricted to exact hits if any."""
        hit = (d2 == 0) & valid
        logits = torch.where(hit.any(dim=-1, keepdim=True),
                             torch.where(hit, 0.0, -torch.inf),
                             -0.5 * self.config.power * d2.log())
        return torch.where(valid, logits, -torch.inf).softmax(dim=-1)


@register_family("knn")
class KNearestMean(LocalAverage):
    """Equal weights on the ``k`` nearest valid context points (all, if fewer are valid)."""

    config_class = KNearestConfig

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """``1/k'`` on the ``k' = min(k, #valid)`` nearest valid points, 0 elsewhere."""
        d2 = torch.where(valid, d2, torch.inf)
        nearest = d2.topk(min(self.config.k, d2.shape[-1]), dim=-1, largest=False)
        chosen = torch.zeros_like(d2).scatter_(-1, nearest.indices,
                                               nearest.values.isfinite().to(d2.dtype))
        return chosen / chosen.sum(dim=-1, keepdim=True)


@register_family("persistence")
class Persistence(LocalAverage):
    """The latest context value at the nearest observed location ("tomorrow = today").

    All weight goes to one context point: the nearest valid one, and among equally near
    ones (e.g. earlier readings of the same station) the latest (with ``dim_t = 0``, the
    first in context order). The std is ``std_scale·min_std``, a constant fitted by
    :meth:`LocalAverage.calibrate`.
    """

    config_class = PersistenceConfig

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """One-hot on the latest of the nearest valid context points."""
        d2 = torch.where(valid, d2, torch.inf)
        nearest = d2 <= d2.amin(dim=-1, keepdim=True) * (1 + 1e-6) + 1e-12
        latest = (torch.zeros_like(d2) if t_ctx is None else t_ctx).expand_as(d2)
        score = torch.where(nearest, latest, -torch.inf)
        choice = score.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(d2).scatter_(-1, choice, 1.0)


LOCAL_AVERAGES: dict[str, type[LocalAverage]] = {
    "idw": IDW, "knn": KNearestMean, "persistence": Persistence}
"""The training-free families by name."""


def baseline_likelihood(likelihood: str) -> str:
    """The likelihood of the local average that meets a task of ``likelihood``.

    Counts of any family (Poisson, negative binomial, zero-inflated): ``poisson``;
    ``binomial`` and ``bernoulli`` as they are; categorical as it is; any continuous
    family (Student-t, mixture, Beta): ``gaussian``.
    """
    if likelihood in ("gaussian", "categorical", "poisson", "binomial", "bernoulli"):
        return likelihood
    if offset_of(likelihood) == "exposure":
        return "poisson"
    return "gaussian"


def calibrated_local_averages(names: Iterable[str], batches: Iterable[Batch],
                              likelihood: str = "gaussian") -> dict[str, LocalAverage]:
    """The named local averages (``idw``, ``knn``, ``persistence``), calibrated.

    Each has its default settings, the role widths of ``batches`` and the likelihood that
    meets the task's ``likelihood`` (:func:`baseline_likelihood`), and its ``std_scale``
    fitted on them.

    Raises:
        ValueError: On an unknown name, or batches without valid test targets.
    """
    names, batches = list(names), list(batches)
    unknown = sorted(set(names) - set(LOCAL_AVERAGES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(LOCAL_AVERAGES)}")
    if not batches:
        raise ValueError("calibrate needs at least one batch")
    first = batches[0]
    widths = {"dim_s": first.s_ctx.shape[-1], "dim_f": first.f_ctx.shape[-1],
              "dim_t": 0 if first.t_ctx is None else first.t_ctx.shape[-1]}
    models = {name: LOCAL_AVERAGES[name](**widths, likelihood=baseline_likelihood(likelihood))
              for name in names}
    for model in models.values():
        model.calibrate(batches)
    return models
