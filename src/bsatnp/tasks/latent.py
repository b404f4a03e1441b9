"""Latent-GP tasks through a link: counts, presence and proportions (issue 32).

Each task of a batch draws a noise-free 2D-GP field ``g`` exactly as the 2D-GP benchmark does
(:class:`~bsatnp.tasks.gp2d.GP2DTask`: RBF kernel, its priors, box and evaluation domains),
a per-task intercept ``a`` and the family's other parameters, and observes, at every
context and test point, a value of the ``likelihood`` family (:mod:`bsatnp.likelihoods`) with
linear predictor ``η = a + g``:

=====================  =====================================================
``poisson``            counts, rate ``exp(η)``
``negative_binomial``  counts, mean ``exp(η)``, dispersion ``r``
``zip``, ``zinb``      the same with structural zeros of share ``π``
``bernoulli``          presence, ``P(1) = sigmoid(η)``
``binomial``           successes out of ``n`` trials, ``p = sigmoid(η)``
``beta``               proportions, mean ``sigmoid(η)``, precision ``φ``
=====================  =====================================================

Counts can rest on an **exposure** per point (``exposure``: a log-uniform range; the rate
is then ``exposure·exp(η)``), and a binomial's trials are drawn per point from ``trials``;
both travel in the batch's ``offset_ctx``/``offset_test``.

Values are drawn by ``torch.distributions`` under a seed taken from the batch's generator
(so a batch is reproducible and the global random state is left alone).

The **floor** (:meth:`LatentGPTask.sample_with_oracle`) is the family's distribution at the
test points under the *true* latent field and parameters: what no model can beat on average
(it knows ``g`` where the model sees only noisy counts), scored like the oracle of the
Gaussian tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution

from bsatnp.batch import Batch
from bsatnp.likelihoods import likelihood_family
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.registry import register_task

OBSERVATIONS = ("poisson", "negative_binomial", "zip", "zinb", "bernoulli", "binomial", "beta")
"""The families a latent-GP task observes through."""


@register_task
@dataclass(frozen=True)
class LatentGPTask(GP2DTask):
    """2D latent-GP fields seen through a likelihood (module doc).

    Attributes:
        likelihood: The observation family, one of :data:`OBSERVATIONS`.
        intercept: Range of the per-task intercept ``a`` (uniform).
        dispersion: Range of the negative binomial's ``r`` (log-uniform).
        zero_share: Range of the zero-inflated families' ``π`` (uniform).
        precision: Range of the Beta's ``φ`` (log-uniform).
        exposure: Range of the counts' exposure per point (log-uniform), or ``None``
            for exposure 1 and no offset in the batch.
        trials: Range of the binomial's trials per point (uniform integers, inclusive).
    """

    name: ClassVar[str] = "latent_gp"
    has_oracle: ClassVar[bool] = True
    likelihood: str = "poisson"  # type: ignore[misc]
    intercept: tuple[float, float] = (-0.5, 2.0)
    dispersion: tuple[float, float] = (1.0, 30.0)
    zero_share: tuple[float, float] = (0.05, 0.5)
    precision: tuple[float, float] = (2.0, 50.0)
    exposure: tuple[float, float] | None = None
    trials: tuple[int, int] = (1, 50)
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.likelihood not in OBSERVATIONS:
            raise ValueError(f"LatentGPTask.likelihood must be one of {OBSERVATIONS}, got "
                             f"{self.likelihood!r}")
        for name in ("intercept", "dispersion", "zero_share", "precision", "exposure",
                     "trials"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] <= bounds[1]:
                raise ValueError(f"LatentGPTask.{name} must be (low, high), got {bounds}")
        if self.exposure is not None and not (
                self.exposure[0] > 0 and likelihood_family(self.likelihood).offset == "exposure"):
            raise ValueError("LatentGPTask.exposure needs a count likelihood and a positive "
                             f"range, got {self.exposure} for {self.likelihood!r}")
        if self.trials[0] < 1:
            raise ValueError(f"LatentGPTask.trials must be at least 1, got {self.trials}")

    def model_defaults(self) -> dict[str, Any]:
        """A 2D location, one value of the task's likelihood."""
        return {**super().model_defaults(), "likelihood": self.likelihood}

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch of observed values (float32)."""
        return self.sample_with_oracle(generator, split)[0]

    def sample_with_oracle(self, generator: torch.Generator | None = None,
                           split: str = "test") -> tuple[Batch, Distribution]:
        """The batch and the floor: the family at the test points under the true field."""
        latent, _ = self.draw(generator)  # the GP values (noise_std 0: the latent field)
        n_ctx = latent.f_ctx.shape[1]
        g = torch.cat([latent.f_ctx, latent.f_test], 1).double()  # [B, L, 1]
        raw = self._raw(g, generator)
        offset = self._offset(g, generator)
        family = likelihood_family(self.likelihood)
        dist = family.distribution(raw, offset=offset)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # the batch's generator decides, alone
            torch.manual_seed(seed)
            values = dist.sample().float()
        batch = latent.map(f_ctx=values[:, :n_ctx], f_test=values[:, n_ctx:])
        if offset is not None:
            batch = batch.map(offset_ctx=offset[:, :n_ctx].float(),
                              offset_test=offset[:, n_ctx:].float())
        floor = family.distribution(raw[:, n_ctx:],
                                    offset=None if offset is None else offset[:, n_ctx:])
        return batch, floor

    def _offset(self, g: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """Exposures or trials per point ``[B, L, 1]`` (float64), or ``None`` for none."""
        if self.likelihood == "binomial":
            low, high = self.trials
            return torch.randint(low, high + 1, g.shape, generator=generator).double()
        if self.exposure is None:
            return None
        low, high = (math.log(b) for b in self.exposure)
        return (low + (high - low) * torch.rand(g.shape, generator=generator,
                                                dtype=torch.float64)).exp()

    def _raw(self, g: Tensor, generator: torch.Generator | None) -> Tensor:
        """The family's raw parameters ``[B, L, outputs]`` at latent values ``g``."""
        B = g.shape[0]

        def per_task(bounds: tuple[float, float], log: bool = False) -> Tensor:
            u = torch.rand(B, 1, 1, generator=generator, dtype=torch.float64)
            low, high = (math.log(b) for b in bounds) if log else bounds
            value = low + (high - low) * u
            return value.exp() if log else value

        eta = per_task(self.intercept) + g
        parts = [eta]
        if self.likelihood in ("negative_binomial", "zinb"):
            parts.append(_softplus_inverse(per_task(self.dispersion, log=True) - 1e-6))
        if self.likelihood == "beta":
            parts.append(_softplus_inverse(per_task(self.precision, log=True) - 1e-6))
        if self.likelihood in ("zip", "zinb"):
            share = per_task(self.zero_share)
            parts.append((share / (1 - share)).log())
        return torch.cat([part.expand_as(eta) for part in parts], -1)


def _softplus_inverse(y: Tensor) -> Tensor:
    return torch.log(torch.expm1(y))
