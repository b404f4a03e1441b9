"""A broad spatial prior: fields and designs like real data, framed as local conditioning.

Every task of a batch draws its own field and design:

* **covariance**: ``σ₁² M_ν₁(r/ℓ₁)`` with ν ∈ {1/2, 3/2, 5/2, ∞} (∞: the squared
  exponential) and ℓ₁ log-uniform over two decades of the domain, plus with probability
  ``p_two_scales`` a second component ``σ₂² M_ν₂(r/ℓ₂)`` at another scale; ``r`` is an
  anisotropic distance ``|diag(1, 1/a) R(θ)ᵀ (s − s')|`` with ratio ``a ≤ max_anisotropy``
  at any angle θ;
* **trend**: a random linear trend ``β₀ + β·s``, ``β ~ N(0, trend_var I)`` (a random effect,
  so the oracle integrates it out exactly: it adds ``trend_var (1 + s·s')``);
* **noise**: noise-to-signal variance ratio log-uniform on ``noise_ratio``;
* **design** (one of): uniform; clustered (a Thomas process); a grid with contiguous
  cloud-like holes (unions of discs); along-track (points along random lines).

The test points lie in holes cut into the design (the design's points inside random discs)
and, for a share ``scattered_share``, at scattered design points. The number of valid
context points is uniform between ``min_ctx`` and ``max_ctx``. Finally each task is put in
its :class:`~bsatnp.data.neighbours.LocalFrame`, exactly as local conditioning frames a
neighbourhood: context bounding box onto ``[−half_width, half_width]``, context values to
mean 0 and standard deviation 1; the oracle (the exact GP with the true covariance, trend
and noise) is framed alike, so the NLL gap to it is unchanged by the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.distributions import Normal

from bsatnp.batch import Batch
from bsatnp.tasks.base import IN_DOMAIN, Task
from bsatnp.tasks.frames import LocalFrame
from bsatnp.tasks.registry import register_task

NUS = (0.5, 1.5, 2.5, math.inf)
"""Matérn smoothness: 1/2, 3/2, 5/2 and ∞ (squared exponential)."""
DESIGNS = ("uniform", "clustered", "holes", "tracks")


def matern(r: np.ndarray, nu: float) -> np.ndarray:
    """Matérn correlation at scaled distances ``r = d/ℓ`` (closed forms; ∞: RBF)."""
    if nu == 0.5:
        return np.exp(-r)
    if nu == 1.5:
        a = math.sqrt(3) * r
        return (1 + a) * np.exp(-a)
    if nu == 2.5:
        a = math.sqrt(5) * r
        return (1 + a + a * a / 3) * np.exp(-a)
    if nu == math.inf:
        return np.exp(-0.5 * r * r)
    raise ValueError(f"nu must be one of {NUS}, got {nu}")


@dataclass(frozen=True)
class FieldParams:
    """The true field of one task (what its oracle needs).

    Attributes:
        components: ``(variance, nu, lengthscale)`` per covariance component.
        rotation: ``[2, 2]`` orthogonal matrix ``R(θ)``.
        ratio: Anisotropy ratio ``a >= 1`` (the second rotated axis is stretched by it).
        trend_var: Prior variance of each trend coefficient.
        noise_var: Variance of the observation noise.
    """

    components: tuple[tuple[float, float, float], ...]
    rotation: np.ndarray
    ratio: float
    trend_var: float
    noise_var: float

    def covariance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Prior covariance ``[N, M]`` of the field (trend included, noise excluded)."""
        scale = np.array([1.0, 1.0 / self.ratio])
        ra, rb = (a @ self.rotation) * scale, (b @ self.rotation) * scale
        d = np.sqrt(((ra[:, None, :] - rb[None, :, :]) ** 2).sum(-1))
        cov = sum(var * matern(d / ls, nu) for var, nu, ls in self.components)
        return cov + self.trend_var * (1.0 + a @ b.T)


def gp_predictive(params: FieldParams, s_ctx: np.ndarray, f_ctx: np.ndarray,
                  s_test: np.ndarray, jitter: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Exact predictive mean and std (noise-free targets) in float64."""
    k_cc = params.covariance(s_ctx, s_ctx)
    k_cc[np.diag_indices_from(k_cc)] += params.noise_var + jitter
    k_tc = params.covariance(s_test, s_ctx)
    chol = np.linalg.cholesky(k_cc)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, f_ctx))
    v = np.linalg.solve(chol, k_tc.T)
    prior = sum(var for var, _, _ in params.components) + params.trend_var * (
        1.0 + (s_test * s_test).sum(1))
    return k_tc @ alpha, np.sqrt(np.maximum(prior - (v * v).sum(0), 1e-12))[:, None]


@register_task
@dataclass(frozen=True)
class SpatialTask(Task):
    """Broad-prior spatial tasks (module doc), framed like local conditioning.

    Attributes:
        batch_size: Tasks per batch.
        n_ctx: Context slots (valid and padded).
        n_test: Test points.
        min_ctx: Fewest valid context points.
        max_ctx: Most valid context points (at most ``n_ctx``).
        lengthscale: Range of ℓ (log-uniform), in units of the domain ``[−1, 1]²``.
        noise_ratio: Range of the noise-to-signal variance ratio (log-uniform).
        trend_var: Largest prior variance of the trend coefficients (uniform from 0).
        p_two_scales: Probability of a second covariance component.
        max_anisotropy: Largest anisotropy ratio (log-uniform from 1).
        scattered_share: Share of the test points at scattered design points.
        half_width: Half-width of the box the context is framed onto.
    """

    name: ClassVar[str] = "spatial"
    has_oracle: ClassVar[bool] = True
    domains: ClassVar[tuple[str, ...]] = (IN_DOMAIN,)
    framed: ClassVar[bool] = True

    batch_size: int = 8
    n_ctx: int = 512
    n_test: int = 256
    min_ctx: int = 16
    max_ctx: int = 512
    lengthscale: tuple[float, float] = (0.02, 2.0)
    noise_ratio: tuple[float, float] = (1e-3, 1.0)
    trend_var: float = 1.0
    p_two_scales: float = 0.3
    max_anisotropy: float = 4.0
    scattered_share: float = 0.25
    half_width: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_ctx <= self.max_ctx <= self.n_ctx:
            raise ValueError(f"need 1 <= min_ctx <= max_ctx <= n_ctx, got {self.min_ctx}, "
                             f"{self.max_ctx}, {self.n_ctx}")
        for name in ("lengthscale", "noise_ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high")
        if self.max_anisotropy < 1 or not 0 <= self.p_two_scales <= 1:
            raise ValueError("need max_anisotropy >= 1 and 0 <= p_two_scales <= 1")

    def model_defaults(self) -> dict[str, Any]:
        """2D locations, one Gaussian value."""
        return {"dim_x": 0, "dim_s": 2, "dim_t": 0, "dim_f": 1, "likelihood": "gaussian"}

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch (``f_ctx`` noisy, ``f_test`` noise-free), every task framed."""
        return self._batch(generator, oracle=False)[0]

    def sample_with_oracle(self, generator: torch.Generator | None = None,
                           split: str = "test") -> tuple[Batch, Normal]:
        """The batch :meth:`sample` draws and the framed exact predictive at its test points."""
        batch, oracle = self._batch(generator, oracle=True)
        assert oracle is not None
        return batch, oracle

    def _batch(self, generator: torch.Generator | None, oracle: bool
               ) -> tuple[Batch, Normal | None]:
        rng = _numpy_rng(generator)
        tasks = [self._task(rng, oracle) for _ in range(self.batch_size)]
        stacked = {key: torch.as_tensor(np.stack([t[key] for t in tasks]))
                   for key in tasks[0]}
        floats = {key: value.float() for key, value in stacked.items() if key != "mask_ctx"}
        batch = Batch(s_ctx=floats["s_ctx"], f_ctx=floats["f_ctx"],
                      mask_ctx=stacked["mask_ctx"], s_test=floats["s_test"],
                      f_test=floats["f_test"])
        return batch, (Normal(floats["mean"], floats["std"]) if oracle else None)

    # ------------------------------------------------------------------ one task
    def field(self, rng: np.random.Generator) -> FieldParams:
        """Draw the covariance, trend and noise of one task."""
        n_components = 2 if rng.random() < self.p_two_scales else 1
        lo, hi = np.log(self.lengthscale)
        lengthscales = np.sort(np.exp(rng.uniform(lo, hi, n_components)))
        weights = rng.dirichlet(np.ones(n_components)) if n_components > 1 else np.ones(1)
        components = tuple((float(w), float(NUS[rng.integers(len(NUS))]), float(ls))
                           for w, ls in zip(weights, lengthscales))
        theta = rng.uniform(0, math.pi)
        rotation = np.array([[math.cos(theta), -math.sin(theta)],
                             [math.sin(theta), math.cos(theta)]])
        ratio = float(np.exp(rng.uniform(0, math.log(self.max_anisotropy))))
        lo, hi = np.log(self.noise_ratio)
        return FieldParams(components, rotation, ratio,
                           float(rng.uniform(0, self.trend_var)),
                           float(np.exp(rng.uniform(lo, hi))))

    def design(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` observed design points in ``[−1, 1]²`` and the hole points (targets)."""
        kind = DESIGNS[rng.integers(len(DESIGNS))]
        holes = _discs(rng)
        total = int(n * 1.6) + self.n_test
        for _ in range(20):  # enough points outside the holes
            points = _design(kind, rng, total)
            inside = _in_discs(points, holes)
            if (~inside).sum() >= n:
                break
            total *= 2
        return points[~inside], points[inside]

    def _task(self, rng: np.random.Generator, oracle: bool) -> dict[str, np.ndarray]:
        params = self.field(rng)
        n_valid = int(rng.integers(self.min_ctx, self.max_ctx + 1))
        n_scattered = int(round(self.n_test * self.scattered_share))
        outside, in_holes = self.design(rng, n_valid + n_scattered)
        outside = outside[rng.permutation(len(outside))]
        ctx, scattered = outside[:n_valid], outside[n_valid:n_valid + n_scattered]
        n_hole = self.n_test - len(scattered)
        if len(in_holes) < n_hole:  # few hole points: the rest scattered
            extra = outside[n_valid + n_scattered:][: n_hole - len(in_holes)]
            in_holes = np.concatenate([in_holes, extra])
        hole = in_holes[rng.permutation(len(in_holes))[:n_hole]]
        test = np.concatenate([scattered, hole])[: self.n_test]
        points = np.concatenate([ctx, test])
        cov = params.covariance(points, points)
        cov[np.diag_indices_from(cov)] += 1e-8
        f = np.linalg.cholesky(cov) @ rng.standard_normal((len(points), 1))
        f_ctx = f[:n_valid] + math.sqrt(params.noise_var) * rng.standard_normal((n_valid, 1))
        f_test = f[n_valid:]
        frame = LocalFrame.fit(ctx, f_ctx, self.half_width)
        pad = self.n_ctx - n_valid
        fields = {"s_ctx": np.concatenate([frame.space(ctx), np.zeros((pad, 2))]),
                  "f_ctx": np.concatenate([frame.values(f_ctx), np.zeros((pad, 1))]),
                  "mask_ctx": np.arange(self.n_ctx) < n_valid,
                  "s_test": frame.space(test), "f_test": frame.values(f_test)}
        if oracle:
            mean, std = gp_predictive(params, ctx, f_ctx, test)
            fields.update(mean=frame.values(mean), std=std / frame.scale)
        return fields


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from ``generator`` (so a torch seed fixes the batch)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return np.random.default_rng(seed)


def _discs(rng: np.random.Generator) -> np.ndarray:
    """1-5 random discs ``[k, 3]`` (centre x, y and radius): a cloud-like hole pattern."""
    k = int(rng.integers(1, 6))
    return np.column_stack([rng.uniform(-1, 1, (k, 2)), rng.uniform(0.05, 0.45, k)])


def _in_discs(points: np.ndarray, discs: np.ndarray) -> np.ndarray:
    d2 = ((points[:, None, :] - discs[None, :, :2]) ** 2).sum(-1)
    return (d2 <= discs[None, :, 2] ** 2).any(1)


def _design(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points of one design in ``[−1, 1]²``."""
    if kind == "uniform":
        return rng.uniform(-1, 1, (n, 2))
    if kind == "clustered":  # Thomas process
        k = int(rng.integers(3, 30))
        centres = rng.uniform(-1, 1, (k, 2))
        spread = rng.uniform(0.02, 0.2)
        points = centres[rng.integers(k, size=n)] + spread * rng.standard_normal((n, 2))
        return np.clip(points, -1, 1)
    if kind == "holes":  # a regular grid, jittered by a tiny amount
        side = int(math.ceil(math.sqrt(n)))
        axis = np.linspace(-1, 1, side)
        grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
        return grid[rng.permutation(len(grid))[:n]] + 1e-4 * rng.standard_normal((n, 2))
    # tracks: points along 2-8 random lines across the domain
    k = int(rng.integers(2, 9))
    start, angle = rng.uniform(-1, 1, (k, 2)), rng.uniform(0, math.pi, k)
    line = rng.integers(k, size=n)
    t = rng.uniform(-2, 2, n)
    direction = np.stack([np.cos(angle), np.sin(angle)], 1)
    points = start[line] + t[:, None] * direction[line] + 0.01 * rng.standard_normal((n, 2))
    inside = (np.abs(points) <= 1).all(1)
    points = points[inside]
    if len(points) < n:
        points = np.concatenate([points, rng.uniform(-1, 1, (n - len(points), 2))])
    return points
