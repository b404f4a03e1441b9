"""The broad spatial prior: closed-form Matérn, PSD covariances, rotations, holes, oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsatnp.tasks.spatial import (
    NUS,
    FieldParams,
    SpatialTask,
    _discs,
    _in_discs,
    gp_predictive,
    matern,
)

special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_closed_forms_equal_the_bessel_formula(nu):
    r = np.linspace(1e-3, 6, 200)
    a = math.sqrt(2 * nu) * r
    bessel = 2 ** (1 - nu) / special.gamma(nu) * a ** nu * special.kv(nu, a)
    np.testing.assert_allclose(matern(r, nu), bessel, rtol=1e-10, atol=1e-14)
    assert matern(np.zeros(1), nu)[0] == 1.0


def test_matern_infinity_is_the_squared_exponential_and_unknown_nu_is_refused():
    r = np.linspace(0, 4, 9)
    np.testing.assert_allclose(matern(r, math.inf), np.exp(-r * r / 2))
    with pytest.raises(ValueError, match="nu must be one of"):
        matern(r, 1.0)


@pytest.mark.parametrize("seed", range(6))
def test_drawn_fields_have_psd_covariances_and_orthogonal_rotations(seed):
    task = SpatialTask()
    rng = np.random.default_rng(seed)
    params = task.field(rng)
    rotation = params.rotation
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(2), atol=1e-12)
    assert math.isclose(np.linalg.det(rotation), 1.0, abs_tol=1e-12)
    assert 1.0 <= params.ratio <= task.max_anisotropy
    assert all(nu in NUS for _, nu, _ in params.components)
    assert math.isclose(sum(var for var, _, _ in params.components), 1.0)
    points = rng.uniform(-1, 1, (300, 2))
    cov = params.covariance(points, points)
    np.testing.assert_allclose(cov, cov.T, atol=1e-12)
    assert np.linalg.eigvalsh(cov).min() > -1e-8 * np.abs(cov).max()


def test_anisotropy_stretches_the_rotated_axis():
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])  # 90°: the second rotated axis is x
    params = FieldParams(((1.0, 0.5, 1.0),), rotation, 4.0, 0.0, 0.0)
    origin = np.zeros((1, 2))
    along_x = params.covariance(origin, np.array([[1.0, 0.0]]))[0, 0]
    along_y = params.covariance(origin, np.array([[0.0, 1.0]]))[0, 0]
    assert math.isclose(along_x, math.exp(-1 / 4)) and math.isclose(along_y, math.exp(-1))


def test_the_oracle_is_the_gaussian_conditional():
    rng = np.random.default_rng(0)
    params = SpatialTask().field(rng)
    ctx, test = rng.uniform(-1, 1, (40, 2)), rng.uniform(-1, 1, (7, 2))
    f = rng.normal(size=(40, 1))
    mean, std = gp_predictive(params, ctx, f, test)
    joint = params.covariance(np.concatenate([ctx, test]), np.concatenate([ctx, test]))
    k_cc = joint[:40, :40] + (params.noise_var + 1e-8) * np.eye(40)
    k_tc, k_tt = joint[40:, :40], joint[40:, 40:]
    np.testing.assert_allclose(mean, k_tc @ np.linalg.solve(k_cc, f), rtol=1e-6, atol=1e-8)
    var = np.diag(k_tt - k_tc @ np.linalg.solve(k_cc, k_tc.T))
    np.testing.assert_allclose(std[:, 0], np.sqrt(var), rtol=1e-6)


def test_holes_are_unions_of_discs_and_the_context_stays_outside():
    rng = np.random.default_rng(3)
    task = SpatialTask()
    for _ in range(10):
        outside, inside = task.design(rng, 200)
        assert len(outside) >= 200
        assert (np.abs(outside) <= 1 + 1e-3).all()
    discs = _discs(np.random.default_rng(4))
    points = np.random.default_rng(5).uniform(-1, 1, (2000, 2))
    inside = _in_discs(points, discs)
    distance = np.sqrt(((points[:, None] - discs[None, :, :2]) ** 2).sum(-1))
    assert np.array_equal(inside, (distance <= discs[None, :, 2]).any(1))


def test_batches_are_framed_reproducible_and_their_oracle_calibrated():
    task = SpatialTask(batch_size=8, n_ctx=128, n_test=64, min_ctx=16, max_ctx=128)
    z = []
    for seed in range(6):
        batch = task.sample(torch.Generator().manual_seed(seed))
        same, oracle = task.sample_with_oracle(torch.Generator().manual_seed(seed))
        assert torch.equal(batch.f_ctx, same.f_ctx) and torch.equal(batch.s_test, same.s_test)
        for b in range(8):
            valid = batch.mask_ctx[b]
            assert 16 <= int(valid.sum()) <= 128
            f = batch.f_ctx[b][valid].double()
            assert abs(float(f.mean())) < 1e-4 and abs(float(f.std(unbiased=False)) - 1) < 1e-3
            assert math.isclose(float(batch.s_ctx[b][valid].abs().max()), 2.0, rel_tol=1e-5)
        z.append(((same.f_test - oracle.mean) / oracle.stddev).flatten())
    z = torch.cat(z)
    assert abs(float(z.mean())) < 0.15 and abs(float(z.std()) - 1) < 0.15  # calibrated
