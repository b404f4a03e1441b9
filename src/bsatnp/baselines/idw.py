"""Training-free local averages: inverse distance, k nearest neighbours, persistence.

Persistence is the latest value at the nearest observed location. Each predicts, at each
test point, a weighted average of the valid context values, ``μ = Σ_i w_i f_i`` with
weights ``w`` that sum to one, and a standard deviation from the spread of those values::

    σ = std_scale · sqrt(Σ_i w_i (f_i − μ)² + min_std²)

``std_scale`` (1 by default) is fit by :meth:`LocalAverage.calibrate`. Weights depend on
coordinate differences only, so predictions are invariant to translating all locations.
Test points are processed in chunks, so memory is ``O(chunk_size · Lc)`` per task.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from bsatnp.batch import Batch


class LocalAverage(nn.Module):
    """Base class: weights from squared distances to the context → Gaussian prediction.

    Subclasses implement :meth:`weights`.

    Args:
        min_std: Floor added (in quadrature) to the local standard deviation.
        chunk_size: Test points per chunk.
    """

    def __init__(self, min_std: float = 0.01, chunk_size: int = 256) -> None:
        super().__init__()
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.min_std = min_std
        self.chunk_size = chunk_size
        self.register_buffer("std_scale", torch.tensor(1.0))

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """Normalised weights ``[B, Q, Lc]`` (zero on padding).

        Args:
            d2: Squared distances test → context ``[B, Q, Lc]``.
            valid: Valid context slots ``[B, 1, Lc]`` (bool; at least one per task).
            t_ctx: Context times ``[B, 1, Lc]`` when the batch has a time role, else ``None``.
        """
        raise NotImplementedError

    def check_batch(self, batch: Batch, need_f_test: bool = False) -> None:
        """Raise ``ValueError`` if ``batch`` lacks locations or is malformed."""
        if not isinstance(batch, Batch):
            raise ValueError(f"batch must be a bsatnp.Batch, got {type(batch).__name__}")
        batch.validate(required_roles=("s",), need_f_test=need_f_test)

    def _unscaled(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mean and ``std_scale``-free std ``[B, Lt, Df]`` of a checked batch."""
        batch = batch.sanitized()
        s_ctx, f_ctx = batch.s_ctx, batch.f_ctx  # [B, Lc, Ds], [B, Lc, Df]
        valid = batch.context_mask()[:, None, :]  # [B, 1, Lc]
        t_ctx = None if batch.t_ctx is None else batch.t_ctx[:, None, :, 0]  # [B, 1, Lc]
        means, stds = [], []
        for s_test in batch.s_test.split(self.chunk_size, dim=1):  # [B, Q, Ds]
            d2 = (s_test[:, :, None, :] - s_ctx[:, None, :, :]).square().sum(-1)  # [B, Q, Lc]
            w = self.weights(d2, valid, t_ctx)
            mean = w @ f_ctx  # [B, Q, Df]
            spread = (f_ctx[:, None, :, :] - mean[:, :, None, :]).square()  # [B, Q, Lc, Df]
            var = (w[..., None] * spread).sum(dim=2)
            means.append(mean)
            stds.append((var + self.min_std**2).sqrt())
        return torch.cat(means, dim=1), torch.cat(stds, dim=1)

    @torch.no_grad()
    def forward(self, batch: Batch) -> Normal:
        """Predictive ``Normal`` with mean/stddev ``[B, Lt, Df]`` at the test locations."""
        self.check_batch(batch)
        mean, std = self._unscaled(batch)
        return Normal(mean, self.std_scale * std, validate_args=False)

    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Predictive mean and standard deviation ``[B, Lt, Df]``."""
        dist = self(batch)
        return dist.mean, dist.stddev

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> float:
        """Fit ``std_scale`` by maximum likelihood on the valid test points of ``batches``.

        For ``σ = c·σ₀`` the NLL is minimised by ``c² = mean(z²)``, ``z = (f − μ)/σ₀``.

        Returns:
            The new ``std_scale``.

        Raises:
            ValueError: If a batch lacks ``f_test`` or there is no valid test point.
        """
        total, count = 0.0, 0
        for batch in batches:
            self.check_batch(batch, need_f_test=True)
            mean, std = self._unscaled(batch)
            mask = batch.test_mask()
            z2 = ((batch.f_test.double() - mean.double()) / std.double()).square()
            total += float(z2[mask].sum())
            count += int(mask.sum()) * z2.shape[-1]
        if count == 0:
            raise ValueError("calibrate needs at least one valid test point")
        self.std_scale.fill_((total / count) ** 0.5)
        return float(self.std_scale)


class IDW(LocalAverage):
    """Inverse-distance weighting: ``w_i ∝ d_i^(−p)`` over the valid context points.

    A test point that coincides with context points takes their values only, so IDW
    interpolates exactly (σ = ``std_scale·min_std`` there for a single coincident point).

    Args:
        power: Exponent ``p`` of the inverse distance.
        min_std: Floor added (in quadrature) to the local standard deviation.
        chunk_size: Test points per chunk.
    """

    def __init__(self, power: float = 2.0, min_std: float = 0.01, chunk_size: int = 256) -> None:
        super().__init__(min_std, chunk_size)
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.power = power

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """Softmax of ``−(p/2)·log d²`` (no overflow), restricted to exact hits if any."""
        hit = (d2 == 0) & valid
        logits = torch.where(hit.any(dim=-1, keepdim=True),
                             torch.where(hit, 0.0, -torch.inf),
                             -0.5 * self.power * d2.log())
        return torch.where(valid, logits, -torch.inf).softmax(dim=-1)


class KNearestMean(LocalAverage):
    """Equal weights on the ``k`` nearest valid context points (all, if fewer are valid).

    Args:
        k: Number of neighbours.
        min_std: Floor added (in quadrature) to the local standard deviation.
        chunk_size: Test points per chunk.
    """

    def __init__(self, k: int = 8, min_std: float = 0.01, chunk_size: int = 256) -> None:
        super().__init__(min_std, chunk_size)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """``1/k'`` on the ``k' = min(k, #valid)`` nearest valid points, 0 elsewhere."""
        d2 = torch.where(valid, d2, torch.inf)
        nearest = d2.topk(min(self.k, d2.shape[-1]), dim=-1, largest=False)
        chosen = torch.zeros_like(d2).scatter_(-1, nearest.indices,
                                               nearest.values.isfinite().to(d2.dtype))
        return chosen / chosen.sum(dim=-1, keepdim=True)


class Persistence(LocalAverage):
    """The latest context value at the nearest observed location ("tomorrow = today").

    All weight goes to one context point: the nearest valid one, and among equally near
    ones (e.g. earlier readings of the same station) the latest. The std is
    ``std_scale·min_std``, a constant fitted by :meth:`LocalAverage.calibrate`.

    Args:
        min_std: Standard deviation before calibration.
        chunk_size: Test points per chunk.
    """

    def __init__(self, min_std: float = 0.1, chunk_size: int = 256) -> None:
        super().__init__(min_std, chunk_size)

    def weights(self, d2: Tensor, valid: Tensor, t_ctx: Tensor | None) -> Tensor:
        """One-hot on the latest of the nearest valid context points."""
        d2 = torch.where(valid, d2, torch.inf)
        nearest = d2 <= d2.amin(dim=-1, keepdim=True) * (1 + 1e-6) + 1e-12
        latest = (torch.zeros_like(d2) if t_ctx is None else t_ctx).expand_as(d2)
        score = torch.where(nearest, latest, -torch.inf)
        choice = score.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(d2).scatter_(-1, choice, 1.0)


LOCAL_AVERAGES = {"idw": IDW, "knn": KNearestMean, "persistence": Persistence}
"""Training-free baselines by name (default settings)."""


def calibrated_local_averages(
    names: Iterable[str], batches: Iterable[Batch]
) -> dict[str, LocalAverage]:
    """The named baselines (``idw``, ``knn``, ``persistence``), ``std_scale`` fitted on ``batches``.

    Raises:
        ValueError: On an unknown name, or batches without valid test targets.
    """
    names, batches = list(names), list(batches)
    unknown = sorted(set(names) - set(LOCAL_AVERAGES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(LOCAL_AVERAGES)}")
    models = {name: LOCAL_AVERAGES[name]() for name in names}
    for model in models.values():
        model.calibrate(batches)
    return models
