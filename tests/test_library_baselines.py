"""The league table's library baselines recover the hyperparameters of small known GPs.

`benchmarks/real_data.py` fits a variogram with GSTools (then krigs with PyKrige) and a
Matérn GP with scikit-learn; a wrong call (axes swapped, units confused, a cutoff that
misses the range) would make bsatnp look better than it is, so each fit is checked on
fields drawn from known covariances.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gstools")
pytest.importorskip("pykrige")
pytest.importorskip("sklearn")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_data import fit_gp_kernel, fit_variogram, kriging  # noqa: E402

sys.path.pop(0)


def _field(seed, n, covariance, noise_var):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 10, (n, 2))
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    cov = covariance(distance) + 1e-9 * np.eye(n)
    f = np.linalg.cholesky(cov) @ rng.standard_normal(n) + np.sqrt(noise_var) * \
        rng.standard_normal(n)
    return xy, f


@pytest.mark.parametrize("seed", [0, 3])
def test_gstools_variogram_recovers_sill_range_and_nugget(seed):
    # exponential covariance 2·exp(−h/0.6) plus a nugget of 0.2, 800 points on [0, 10]²
    xy, f = _field(seed, 800, lambda h: 2.0 * np.exp(-h / 0.6), 0.2)
    fitted = fit_variogram(xy, f, "exponential", 800, seed)
    assert fitted.var == pytest.approx(2.0, rel=0.25)
    assert fitted.len_scale == pytest.approx(0.6, rel=0.3)
    assert fitted.nugget == pytest.approx(0.2, abs=0.15)


@pytest.mark.parametrize("seed", [0, 4])
def test_sklearn_matern_fit_recovers_variance_lengthscale_and_noise(seed):
    def matern32(h):
        r = np.sqrt(3) * h / 2.0
        return (1 + r) * np.exp(-r)

    xy, f = _field(seed, 600, matern32, 0.05)
    kernel = fit_gp_kernel(xy, f, 600, seed)  # on standardised values
    assert kernel.k1.k2.length_scale == pytest.approx(2.0, rel=0.2)
    assert kernel.k1.k1.constant_value * f.var() == pytest.approx(1.0, rel=0.45)
    assert kernel.k2.noise_level * f.var() == pytest.approx(0.05, rel=0.25)


def test_local_kriging_predicts_every_target_in_order_and_beats_the_mean():
    xy, f = _field(1, 700, lambda h: np.exp(-h / 1.5), 0.01)
    train, test = np.arange(600), np.arange(600, 700)
    args = type("Args", (), {"variogram": "exponential", "fit_points": 600, "seed": 0,
                             "kriging_points": 64})()
    mean, std = kriging(args, xy[train], f[train], xy[test])
    assert np.isfinite(mean).all() and (std > 0).all()
    rmse = np.sqrt(np.mean((mean - f[test]) ** 2))
    assert rmse < 0.6 * np.std(f[test])  # a correlated field: kriging is far better
    # each target's prediction is its own: swapping two targets swaps the outputs
    swapped = test.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    mean_swapped, _ = kriging(args, xy[train], f[train], xy[swapped])
    np.testing.assert_allclose(mean_swapped[[1, 0]], mean[[0, 1]], rtol=1e-6)
