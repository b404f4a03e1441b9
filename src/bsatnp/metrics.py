"""Metrics of predictions, averaged over the valid points of a batch.

Every Gaussian metric takes predictive ``mean`` and ``std`` and ``target`` of shape
``[B, L, D]`` and a bool ``mask [B, L]`` of the points that count, and returns the average
over all valid points (and output dimensions) of the whole batch — as SPEC §5 defines the
NLL. :func:`categorical_metrics` does the same for class probabilities, and
:func:`distribution_metrics` for the predictive of any other likelihood family. Masked points may
hold anything, NaN included. Computed in float64. :func:`summarize` turns per-batch results
into mean ± standard error, :func:`mean_sd` results of several training seeds into mean ±
standard deviation, and :func:`paired_t_test` compares two models' scores on the same test
batches (it needs scipy, in the ``data`` and ``test`` extras).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from bsatnp.likelihoods import LikelihoodFamily

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
CALIBRATION_LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""Nominal levels 0.1, …, 0.9 used by :func:`calibration_error`."""


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values [B, L, D]`` over valid points ``mask [B, L]`` (0-d tensor)."""
    keep = mask[..., None].expand_as(values)
    if not bool(keep.any()):
        raise ValueError("mask selects no point: the metric is undefined")
    return torch.where(keep, values, 0.0).sum() / keep.sum()


def _z(mean: Tensor, std: Tensor, target: Tensor) -> Tensor:
    """Standardised residuals ``(target − mean) / std`` in float64."""
    return (target.double() - mean.double()) / std.double()


def nll(mean: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood ``−log N(target | mean, std²)`` incl. ``½ log 2π``."""
    z = _z(mean, std, target)
    return _masked_mean(0.5 * z.square() + std.double().log() + _LOG_SQRT_2PI, mask)


def rmse(mean: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Root of the mean squared error over valid points (``std`` unused)."""
    return _masked_mean((target.double() - mean.double()).square(), mask).sqrt()


def mae(mean: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over valid points (``std`` unused)."""
    return _masked_mean((target.double() - mean.double()).abs(), mask)


def coverage(
    mean: Tensor, std: Tensor, target: Tensor, mask: Tensor, level: float = 0.95
) -> Tensor:
    """Fraction of targets inside the central interval ``mean ± z·std`` of mass ``level``."""
    z_level = torch.special.ndtri(torch.tensor((1.0 + level) / 2.0, dtype=torch.float64))
    inside = (_z(mean, std, target).abs() <= z_level).double()
    return _masked_mean(inside, mask)


def crps(mean: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Continuous ranked probability score, closed form for a Gaussian.

    ``σ · (z (2Φ(z) − 1) + 2φ(z) − 1/√π)`` with ``z = (target − mean) / σ``.
    """
    z = _z(mean, std, target)
    cdf = torch.special.ndtr(z)
    pdf = torch.exp(-0.5 * z.square() - _LOG_SQRT_2PI)
    score = std.double() * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    return _masked_mean(score, mask)


def calibration_error(
    mean: Tensor,
    std: Tensor,
    target: Tensor,
    mask: Tensor,
    levels: Sequence[float] = CALIBRATION_LEVELS,
) -> Tensor:
    """Mean over ``levels`` of ``|empirical coverage − nominal level|`` of central intervals."""
    gaps = [(coverage(mean, std, target, mask, lv) - lv).abs() for lv in levels]
    return torch.stack(gaps).mean()


def gaussian_metrics(mean: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """All metrics of one batch.

    Returns:
        Dict with keys ``nll``, ``rmse``, ``mae``, ``cov50``, ``cov90``, ``cov95``,
        ``crps`` and ``cal_err``.
    """
    args = (mean, std, target, mask)
    out = {
        "nll": nll(*args),
        "rmse": rmse(*args),
        "mae": mae(*args),
        "cov50": coverage(*args, level=0.5),
        "cov90": coverage(*args, level=0.9),
        "cov95": coverage(*args, level=0.95),
        "crps": crps(*args),
        "cal_err": calibration_error(*args),
    }
    return {key: float(value) for key, value in out.items()}


def distribution_metrics(family: LikelihoodFamily, dist: Distribution, target: Tensor,
                         mask: Tensor) -> dict[str, float]:
    """Metrics of any registered likelihood's predictive ``dist`` over ``[B, L, D]``.

    Returns:
        ``nll`` (−log-density or −log-mass), ``rmse`` and ``mae`` of the predictive mean,
        ``crps`` (the family's), ``cov90``/``cov95`` (the target inside the central
        quantile interval, ends included) and, for counts, ``deviance`` (the Poisson
        deviance of the mean, ``2·(y·log(y/μ) − (y − μ))``).
    """
    target = torch.where(mask[..., None], target, 0.0).double()  # masked points may be NaN
    mean = dist.mean.double()
    out = {"nll": _masked_mean(-dist.log_prob(target.to(dist.mean.dtype)).double(), mask),
           "rmse": _masked_mean((target - mean).square(), mask).sqrt(),
           "mae": _masked_mean((target - mean).abs(), mask),
           "crps": _masked_mean(family.crps(dist, target), mask)}
    for level in (0.9, 0.95):
        low = family.quantile(dist, (1 - level) / 2)
        high = family.quantile(dist, (1 + level) / 2)
        inside = ((target >= low) & (target <= high)).double()
        out[f"cov{round(100 * level)}"] = _masked_mean(inside, mask)
    if family.discrete and family.bounds[1] == math.inf:
        ratio = torch.where(target > 0, target / mean.clamp_min(1e-300), 1.0)
        out["deviance"] = _masked_mean(2 * (target * ratio.log() - (target - mean)), mask)
    return {key: float(value) for key, value in out.items()}


ECE_BINS = 15
"""Confidence bins of the expected calibration error."""


def categorical_metrics(probs: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """Metrics of class probabilities ``probs [B, L, C]`` against one-hot ``target``.

    Returns:
        ``nll`` (cross-entropy), ``acc`` (accuracy of the most likely class), ``brier``
        (Σ_c (p_c − y_c)², per point), ``ece`` (expected calibration error of the top-class
        confidence over :data:`ECE_BINS` equal-width bins) and ``acc/<c>`` (accuracy on the
        points whose true class is ``c``; NaN when a batch has none).
    """
    keep = mask.bool()
    if not bool(keep.any()):
        raise ValueError("mask selects no point: the metric is undefined")
    p = probs.double()[keep]  # [N, C]
    y = torch.where(mask[..., None], target, 0).double()[keep]
    truth = y.argmax(-1)
    confidence, guess = p.max(-1)
    correct = (guess == truth).double()
    bins = (confidence * ECE_BINS).long().clamp_max(ECE_BINS - 1)
    ece = sum((correct[bins == k] - confidence[bins == k]).sum().abs()
              for k in range(ECE_BINS)) / len(correct)
    out = {
        "nll": -p.gather(1, truth[:, None]).clamp_min(1e-300).log().mean(),
        "acc": correct.mean(),
        "brier": (p - y).square().sum(-1).mean(),
        "ece": ece,
    }
    for c in range(p.shape[-1]):
        here = truth == c
        out[f"acc/{c}"] = correct[here].mean() if bool(here.any()) else torch.tensor(math.nan)
    return {key: float(value) for key, value in out.items()}


def summarize(results: Iterable[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard error of each metric over batches.

    Args:
        results: Per-batch metric dicts (e.g. from :func:`gaussian_metrics`), all with the
            same keys.

    Returns:
        ``key -> (mean, stderr)`` with ``stderr = sd / √n`` (sample sd, ``n − 1``);
        ``stderr`` is NaN for a single batch. NaN entries (a metric undefined on a
        batch) are left out of that metric's mean.
    """
    rows = list(results)
    if not rows:
        raise ValueError("summarize needs at least one result")
    out = {}
    for key in rows[0]:
        values = torch.tensor([row[key] for row in rows], dtype=torch.float64)
        values = values[~values.isnan()] if bool(values.isnan().any()) else values
        n = values.numel()
        stderr = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
        out[key] = (float(values.mean()), stderr)
    return out


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n − 1``) of ``values``, e.g. over training seeds.

    The standard deviation is NaN for a single value.

    Raises:
        ValueError: If ``values`` is empty.
    """
    data = torch.tensor(list(values), dtype=torch.float64)
    if data.numel() == 0:
        raise ValueError("mean_sd needs at least one value")
    return float(data.mean()), float(data.std()) if data.numel() > 1 else math.nan


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t-test of ``mean(a − b) = 0`` (``scipy.stats.ttest_rel``).

    ``a[i]`` and ``b[i]`` are a pair: two models' scores on the same test batch ``i``, so the
    test sees the spread of the per-batch differences, not of the scores themselves.

    Args:
        a: Scores of the first model, one per test batch.
        b: Scores of the second model on the same batches, in the same order.

    Returns:
        ``mean_diff`` (mean of ``a − b``), ``se`` (its standard error, sample sd / √n),
        ``t`` (``mean_diff / se``), ``p`` (two-sided p-value, Student's t with ``n − 1``
        degrees of freedom) and ``n`` (the number of pairs). ``se``, ``t`` and ``p`` are NaN
        for a single pair, ``t`` and ``p`` when every difference is the same (``se`` 0).

    Raises:
        ValueError: If the lengths differ, there is no pair, or a score is not finite.
        ImportError: If scipy is not installed.
    """
    x = torch.tensor(list(a), dtype=torch.float64)
    y = torch.tensor(list(b), dtype=torch.float64)
    if x.shape != y.shape or x.numel() == 0:
        raise ValueError(f"paired_t_test needs two equally long, non-empty sequences of "
                         f"scores (one pair per test batch), got {x.numel()} and {y.numel()}")
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("paired_t_test: every score must be finite")
    try:
        from scipy import stats
    except ImportError as err:
        raise ImportError("paired_t_test needs scipy: pip install 'bsatnp[data]'") from err
    diff = x - y
    n = diff.numel()
    se = float(diff.std()) / math.sqrt(n) if n > 1 else math.nan
    if not se > 0.0:  # one pair or no spread: scipy would warn and return NaN
        t, p = math.nan, math.nan
    else:
        result = stats.ttest_rel(x.numpy(), y.numpy())
        t, p = float(result.statistic), float(result.pvalue)
    return {"mean_diff": float(diff.mean()), "se": se, "t": t, "p": p, "n": n}
