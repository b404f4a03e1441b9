import math

import numpy as np
import pytest
import torch

from bsatnp.batch import Batch
from bsatnp.metrics import coverage
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.oracle import GPParams, gp_posterior

VAR, LS, NOISE, JITTER = 1.3, 0.7, 0.2, 1e-5


def _params(b=1):
    return GPParams(
        kernel="rbf",
        var=torch.full((b,), VAR, dtype=torch.float64),
        lengthscale=torch.full((b,), LS, dtype=torch.float64),
        noise=NOISE,
        jitter=JITTER,
    )


def _np_rbf(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return VAR * np.exp(-0.5 * d2 / LS**2)


def test_one_context_point_closed_form():
    xc, yc = [0.2, -0.1], 0.8
    xt = [[0.2, -0.1], [1.0, 0.5]]
    batch = Batch(
        s_ctx=torch.tensor([[xc]]),
        f_ctx=torch.tensor([[[yc]]]),
        s_test=torch.tensor([xt]),
    )
    pred = gp_posterior(batch, _params())
    assert pred.mean.shape == (1, 2, 1) and pred.mean.dtype == torch.float32
    denom = VAR + JITTER + NOISE**2
    for i, p in enumerate(xt):
        k = VAR * math.exp(-0.5 * math.dist(p, xc) ** 2 / LS**2)
        assert pred.mean[0, i, 0].item() == pytest.approx(k * yc / denom, rel=1e-6)
        var = VAR + JITTER - k**2 / denom
        assert pred.stddev[0, i, 0].item() == pytest.approx(math.sqrt(var), rel=1e-6)


def test_two_context_points_with_padding_vs_numpy():
    xc = np.array([[0.0, 0.0], [0.5, 0.3]])
    yc = np.array([0.4, -1.1])
    xt = np.array([[0.1, 0.1], [0.6, 0.2], [2.0, -1.0]])
    k_cc = _np_rbf(xc, xc) + (NOISE**2 + JITTER) * np.eye(2)
    k_tc = _np_rbf(xt, xc)
    mean = k_tc @ np.linalg.solve(k_cc, yc)
    var = VAR + JITTER - np.einsum("ij,ji->i", k_tc, np.linalg.solve(k_cc, k_tc.T))
    # Slot order: valid, padded (garbage), valid.
    s_ctx = torch.tensor(np.array([[xc[0], [1e4, np.nan], xc[1]]]), dtype=torch.float32)
    f_ctx = torch.tensor([[[yc[0]], [float("nan")], [yc[1]]]], dtype=torch.float32)
    batch = Batch(
        s_ctx=s_ctx,
        f_ctx=f_ctx,
        mask_ctx=torch.tensor([[True, False, True]]),
        s_test=torch.tensor(xt[None], dtype=torch.float32),
    )
    pred = gp_posterior(batch, _params())
    np.testing.assert_allclose(pred.mean[0, :, 0].numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.stddev[0, :, 0].numpy(), np.sqrt(var), rtol=1e-5)


def test_padded_slots_change_nothing_vs_dropping_them():
    task = GP2DTask(batch_size=4, n_ctx=40, n_test=30, min_ctx=5, max_ctx=35)
    batch, params = task.draw(torch.Generator().manual_seed(0))
    pad = ~batch.mask_ctx[..., None]
    garbage = batch.map(
        s_ctx=torch.where(pad, 1e4, batch.s_ctx), f_ctx=torch.where(pad, float("nan"), batch.f_ctx)
    )
    full = gp_posterior(garbage, params)
    assert torch.isfinite(full.mean).all() and torch.isfinite(full.stddev).all()
    for b in range(4):
        keep = batch.mask_ctx[b]
        alone = Batch(
            s_ctx=batch.s_ctx[b : b + 1, keep],
            f_ctx=batch.f_ctx[b : b + 1, keep],
            s_test=batch.s_test[b : b + 1],
        )
        one = GPParams("rbf", params.var[b : b + 1], params.lengthscale[b : b + 1], params.noise)
        ref = gp_posterior(alone, one)
        torch.testing.assert_close(full.mean[b], ref.mean[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(full.stddev[b], ref.stddev[0], rtol=1e-5, atol=1e-6)


def test_oracle_is_calibrated_on_the_2d_gp_protocol():
    batch, params = GP2DTask().draw(torch.Generator().manual_seed(1))
    pred = gp_posterior(batch, params)
    assert pred.mean.shape == (8, 1024, 1)
    cov95 = coverage(pred.mean, pred.stddev, batch.f_test, batch.test_mask(), 0.95).item()
    assert 0.93 < cov95 < 0.97
