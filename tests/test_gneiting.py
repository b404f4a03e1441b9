"""The Gneiting space-time GP task (PROTOCOLS §6): covariance, batches, oracle, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, load_experiment
from bsatnp.experiment_trainer import build_trainer
from bsatnp.tasks import batch_generator, gneiting
from bsatnp.tasks.gneiting import GneitingTask, gneiting_covariance, terrain

HYPER = {"var": torch.tensor(1.2, dtype=torch.float64),
         "ls": torch.tensor([0.1, 0.07], dtype=torch.float64),
         "a": torch.tensor(1.5, dtype=torch.float64), "alpha": torch.tensor(0.6),
         "b": torch.tensor(0.5), "nu": torch.tensor(2.0), "gamma": torch.tensor(0.8)}


def test_covariance_closed_form_and_positive_definite():
    s1 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.05, -0.02]], dtype=torch.float64)
    t1, t2 = torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    assert gneiting_covariance(s1, t1, s1, t1, HYPER).item() == pytest.approx(1.2)
    g = 1 + 1.5 * 0.3 ** (2 * 0.6)
    h2 = (0.05 / 0.1) ** 2 + (0.02 / 0.07) ** 2
    want = 1.2 / g**2.0 * math.exp(-((h2 / g**0.5) ** 0.8))
    assert gneiting_covariance(s1, t1, s2, t2, HYPER).item() == pytest.approx(want, rel=1e-6)
    g_ = torch.Generator().manual_seed(0)
    s = 2 * torch.rand(120, 2, generator=g_, dtype=torch.float64) - 1
    t = torch.linspace(0, 1, 12, dtype=torch.float64).repeat(10)
    cov = gneiting_covariance(s, t, s, t, HYPER)
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > -1e-9


def test_batches_forecast_the_frame_after_four_context_frames():
    task = GneitingTask()
    batch = task.sample(torch.Generator().manual_seed(1))
    batch.validate(required_roles=("s", "t"), need_f_test=True)
    assert batch.s_ctx.shape == (4, 64, 2) and batch.t_ctx.shape == (4, 64, 1)
    assert batch.s_test.shape == (4, 256, 2) and batch.t_test.shape == (4, 256, 1)
    step = 1 / 11
    frames = batch.t_ctx[0, ::16, 0]
    assert torch.allclose(frames[1:] - frames[:-1], torch.full((3,), step))  # contiguous
    assert torch.allclose(batch.t_test[0, :, 0], frames[-1] + step)  # the next frame
    per_frame = batch.mask_ctx[0].reshape(4, 16).sum(1)
    assert ((per_frame >= 8) & (per_frame <= 15)).all()
    for name in ("s_ctx", "t_ctx", "mask_ctx", "s_test"):  # shared by the batch's tasks
        value = getattr(batch, name)
        assert torch.equal(value, value[:1].expand_as(value))
    assert not torch.equal(batch.f_test[0], batch.f_test[1])  # draws differ
    assert len({tuple(p) for p in batch.s_test[0].tolist()}) == 256
    assert terrain(batch.s_test[0].double()).std().item() == pytest.approx(1.0)


def test_the_oracle_is_calibrated():
    task = GneitingTask()
    z = []
    for i in range(30):
        batch, oracle = task.sample_with_oracle(batch_generator(3, i))
        z.append(((batch.f_test - oracle.mean) / oracle.stddev).flatten())
    z = torch.cat(z)  # 30 × 4 × 256 standardised residuals
    assert abs(z.mean().item()) < 0.1 and z.std().item() == pytest.approx(1.0, abs=0.08)


def test_the_oracle_equals_a_hand_computed_posterior(monkeypatch):
    """Known hyperparameters, a zero-weight mean (6.0 everywhere) and a fixed noise: the
    oracle's mean and std equal the Gaussian posterior written out in numpy (float64), from
    the batch's own float32 points and values."""
    noise = 0.9 * 0.03
    fixed = torch.tensor(0.03, dtype=torch.float64)
    monkeypatch.setattr(gneiting, "_log_uniform", lambda lo, hi, g: fixed)
    monkeypatch.setattr(gneiting, "WEIGHT_RANGES", dict.fromkeys(gneiting.WEIGHT_RANGES, 0.0))
    monkeypatch.setattr(GneitingTask, "_hyperparameters", lambda self, g: HYPER)
    task = GneitingTask(batch_size=2, n_locations=12, n_slots=6, min_ctx=2, max_ctx=5)
    batch, oracle = task.sample_with_oracle(torch.Generator().manual_seed(4))

    def cov(s1, t1, s2, t2):  # C(h, u) of PROTOCOLS §6, term by term
        g = 1 + 1.5 * np.abs(t1[:, None] - t2[None]) ** (2 * 0.6)
        h2 = (((s1[:, None] - s2[None]) / np.array([0.1, 0.07])) ** 2).sum(-1)
        return 1.2 / g**2.0 * np.exp(-((h2 / g**0.5) ** 0.8))

    for b in range(2):
        valid = batch.mask_ctx[b].numpy()
        sc, tc, fc = (x[b].double().numpy()[valid] for x in (batch.s_ctx, batch.t_ctx[..., 0],
                                                              batch.f_ctx[..., 0]))
        st, tt = batch.s_test[b].double().numpy(), batch.t_test[b, :, 0].double().numpy()
        k_cc = cov(sc, tc, sc, tc) + (5e-4 + noise**2) * np.eye(len(fc))
        k_tc = cov(st, tt, sc, tc)
        mean = 6.0 + k_tc @ np.linalg.solve(k_cc, fc - 6.0)
        var = 1.2 + 5e-4 + noise**2 - np.einsum("ij,ji->i", k_tc, np.linalg.solve(k_cc, k_tc.T))
        np.testing.assert_allclose(oracle.mean[b, :, 0].numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(oracle.stddev[b, :, 0].numpy(), np.sqrt(var), rtol=1e-4)


def test_gneiting_trains_and_evaluates_against_its_oracle(tmp_path):
    paper = load_experiment("gneiting")
    assert paper.model.dim_t == 1 and paper.model.use_t == "both" and paper.model.min_std == 0.05
    config = ExperimentConfig.from_dict({
        "model": {"num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 32, "use_s": "both",
                  "use_t": "both", "min_std": 0.05},
        "task": {"name": "gneiting", "batch_size": 2, "n_locations": 40, "n_slots": 8,
                 "min_ctx": 2, "max_ctx": 7},
        "train": {"steps": 2, "batch_size": 2, "val_every": 2, "val_batches": 1,
                  "out_dir": str(tmp_path)},
        "eval": {"n_batches": 2},
    })
    trainer = build_trainer(config)
    trainer.fit(progress=False)
    entry = evaluate(trainer.model, n_batches=2, task=config.task,
                     progress=False)["domains"]["in_domain"]
    assert entry["gap"]["nll"]["mean"] > 0 and math.isfinite(entry["oracle"]["nll"]["mean"])
