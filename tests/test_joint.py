"""Autoregressive joint samples and joint log-likelihoods (bsatnp.joint)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import random_batch
from torch.distributions import MultivariateNormal, Normal

from bsatnp import Batch
from bsatnp.joint import autoregressive_log_likelihood, autoregressive_samples
from bsatnp.joint_data import joint_samples
from bsatnp.models import BSATNP
from bsatnp.models.base import FamilyConfig, NeuralProcess
from bsatnp.predictor import Predictor
from bsatnp.tasks.kernels import rbf
from bsatnp.tasks.oracle import GPParams, gp_posterior

LENGTHSCALE, NOISE, JITTER = 0.5, 0.1, 1e-5


@dataclass(frozen=True)
class ExactGPConfig(FamilyConfig):
    dim_x: int = 0
    dim_s: int = 2
    dim_t: int = 0
    dim_f: int = 1
    likelihood: str = "gaussian"


class ExactGP(NeuralProcess):
    """The exact GP posterior of noisy values as a model (RBF, variance 1).

    Its predictive of a test value includes the noise, so an appended sample is a value of
    the same kind as the context: autoregressive sampling with chunk 1 is then exact.
    """

    config_class = ExactGPConfig

    def __init__(self) -> None:
        super().__init__(None, {})

    def predictive(self, batch: Batch) -> Normal:
        return gp_posterior(batch, GPParams("rbf", var=torch.tensor(1.0),
                                            lengthscale=torch.tensor(LENGTHSCALE),
                                            noise=NOISE, jitter=JITTER, test_noise=True))


def exact_joint(s_ctx: torch.Tensor, f_ctx: torch.Tensor, s_test: torch.Tensor
                ) -> MultivariateNormal:
    """The joint posterior of noisy test values of one task, by hand in float64."""
    s_ctx, f_ctx, s_test = s_ctx.double(), f_ctx.double(), s_test.double()

    def k(a, b):
        return rbf(a[None], b[None], 1.0, LENGTHSCALE)[0]

    eye = (JITTER + NOISE**2) * torch.eye(len(s_ctx), dtype=torch.float64)
    a = k(s_ctx, s_ctx) + eye
    cross = k(s_ctx, s_test)
    mean = cross.mT @ torch.linalg.solve(a, f_ctx[:, 0])
    cov = (k(s_test, s_test) + (JITTER + NOISE**2) * torch.eye(len(s_test), dtype=torch.float64)
           - cross.mT @ torch.linalg.solve(a, cross))
    return MultivariateNormal(mean, covariance_matrix=cov)


def tiny(seed: int = 0, **overrides) -> BSATNP:
    torch.manual_seed(seed)
    return BSATNP(num_blocks=2, dim=16, num_heads=2, qkv_dim=16, ffn_dim=32,
                  embed_hidden=(32,), head_hidden=(32,), **overrides).eval()


def gp_batch(n_ctx: int = 6, n_test: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.rand(1, n_ctx + n_test, 2, generator=g) - 1
    s[0, n_ctx + 1] = s[0, n_ctx] + 0.05  # two close test points
    f_ctx = torch.sin(2 * s[:, :n_ctx, :1]) + 0.1 * torch.randn(1, n_ctx, 1, generator=g)
    f_test = torch.cos(s[:, n_ctx:, 1:]) + 0.1 * torch.randn(1, n_test, 1, generator=g)
    return Batch(s_ctx=s[:, :n_ctx], f_ctx=f_ctx, s_test=s[:, n_ctx:], f_test=f_test)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- log-likelihood
@pytest.mark.parametrize("order", ["given", "random"])
def test_one_chunk_of_all_points_is_the_diagonal_nll(order):
    """chunk = N: the joint log-likelihood is Σ log N(y | μ, σ) over the valid test points."""
    model = tiny()
    batch = random_batch(B=3, Lc=20, Lt=10, seed=1)
    mask_test = torch.ones(3, 10, dtype=torch.bool)
    mask_test[1, 7:] = False
    batch = batch.map(mask_test=mask_test)
    with torch.no_grad():
        ll = autoregressive_log_likelihood(model, batch, chunk=10, order=order,
                                           generator=generator())
        mean, std = model.predict(batch)
    terms = Normal(mean.double(), std.double()).log_prob(batch.f_test.double())[..., 0]
    by_hand = (terms * mask_test).sum(-1)
    torch.testing.assert_close(ll.double(), by_hand, rtol=1e-5, atol=1e-4)


def test_chunk_one_with_the_exact_gp_is_the_exact_joint_density():
    """AR with chunk 1 over the exact GP factorises its joint density exactly (any order)."""
    batch = gp_batch(n_ctx=7, n_test=9)
    exact = exact_joint(batch.s_ctx[0], batch.f_ctx[0], batch.s_test[0])
    want = exact.log_prob(batch.f_test[0, :, 0].double())
    for seed in (0, 1):
        ll = autoregressive_log_likelihood(ExactGP(), batch, chunk=1, generator=generator(seed))
        assert abs(float(ll[0]) - float(want)) < 1e-3 * max(1.0, abs(float(want)))
    diagonal = autoregressive_log_likelihood(ExactGP(), batch, chunk=9)
    assert float(diagonal[0]) < float(want) - 0.1  # the close pair's correlation is lost


def test_masked_context_and_test_slots_do_not_change_the_results():
    """Padding (garbage in masked context slots, NaN values at masked test points) never
    leaks: samples and log-likelihood equal those of the batch without it."""
    model = tiny(seed=3)
    clean = random_batch(B=1, Lc=10, Lt=8, seed=2).map(mask_ctx=None)
    garbage = torch.full((1, 5, 2), 1e4)
    padded = clean.map(s_ctx=torch.cat([garbage, clean.s_ctx], 1),
                       f_ctx=torch.cat([torch.full((1, 5, 1), float("nan")), clean.f_ctx], 1),
                       mask_ctx=torch.cat([torch.zeros(1, 5, dtype=torch.bool),
                                           torch.ones(1, 10, dtype=torch.bool)], 1))
    for chunk in (1, 3):
        a = autoregressive_samples(model, clean, 50, chunk=chunk, generator=generator(4))
        b = autoregressive_samples(model, padded, 50, chunk=chunk, generator=generator(4))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(
                autoregressive_log_likelihood(model, clean, chunk=chunk, generator=generator(5)),
                autoregressive_log_likelihood(model, padded, chunk=chunk, generator=generator(5)),
                rtol=1e-4, atol=1e-4)
    # A masked test point visited first, holding NaN, is neither scored nor appended.
    extra = clean.map(s_test=torch.cat([torch.zeros(1, 1, 2), clean.s_test], 1),
                      f_test=torch.cat([torch.full((1, 1, 1), float("nan")), clean.f_test], 1),
                      mask_test=torch.cat([torch.zeros(1, 1, dtype=torch.bool),
                                           torch.ones(1, 8, dtype=torch.bool)], 1))
    with torch.no_grad():
        ll = autoregressive_log_likelihood(model, extra, chunk=1, order="given")
        ref = autoregressive_log_likelihood(model, clean, chunk=1, order="given")
    torch.testing.assert_close(ll, ref, rtol=1e-4, atol=1e-4)
    assert bool(torch.isfinite(ll).all())


# --------------------------------------------------------------------------- samples
def test_first_chunk_follows_the_diagonal_marginals():
    """2,000 samples of the first chunk: mean within 4 s.e. of μ, std within 8 % of σ (5 s.e.)."""
    model = tiny(seed=1)
    batch = random_batch(B=2, Lc=16, Lt=12, seed=3)
    S = 2000
    samples = autoregressive_samples(model, batch, S, chunk=4, order="given",
                                     generator=generator(6))
    assert samples.shape == (S, 2, 12, 1)
    mean, std = model.predict(batch)
    first_mean, first_std = samples[:, :, :4].mean(0), samples[:, :, :4].std(0)
    assert bool(((first_mean - mean[:, :4]).abs() < 4 * std[:, :4] / math.sqrt(S)).all())
    assert bool(((first_std / std[:, :4] - 1).abs() < 0.08).all())


def test_exact_gp_samples_have_the_exact_posterior_covariance():
    """With the exact GP as the model, chunk-1 samples are exact joint draws: their mean and
    covariance match the posterior's within 5 standard errors, and the close pair is
    strongly correlated (while one chunk of all points leaves it uncorrelated)."""
    batch = gp_batch(n_ctx=6, n_test=6)
    exact = exact_joint(batch.s_ctx[0], batch.f_ctx[0], batch.s_test[0])
    S = 3000
    samples = autoregressive_samples(ExactGP(), batch, S, chunk=1, generator=generator(7))
    y = samples[:, 0, :, 0].double()  # [S, N]
    cov = exact.covariance_matrix
    var = cov.diagonal()
    se_mean = (var / S).sqrt()
    assert bool(((y.mean(0) - exact.mean).abs() < 5 * se_mean).all())
    sample_cov = torch.cov(y.T)
    se_cov = ((var[:, None] * var[None, :] + cov.square()) / S).sqrt()
    assert bool(((sample_cov - cov).abs() < 5 * se_cov).all())
    exact_corr = cov[0, 1] / (var[0] * var[1]).sqrt()
    sample_corr = torch.corrcoef(y.T)[0, 1]
    assert exact_corr > 0.5 and abs(float(sample_corr - exact_corr)) < 0.06
    marginal = autoregressive_samples(ExactGP(), batch, S, chunk=6, generator=generator(7))
    assert abs(float(torch.corrcoef(marginal[:, 0, :, 0].T)[0, 1])) < 0.06


def test_later_points_depend_on_earlier_samples_with_the_shipped_model():
    """gp2d, two test points 0.02 apart: chunk 1 correlates them, one chunk does not."""
    model = Predictor.from_pretrained("gp2d").model
    g = generator(8)
    s_ctx = 4 * torch.rand(1, 40, 2, generator=g) - 2
    s_test = torch.tensor([[[0.3, 0.3], [0.32, 0.3]]])
    batch = Batch(s_ctx=s_ctx, f_ctx=torch.sin(s_ctx[..., :1]), s_test=s_test)
    joint = autoregressive_samples(model, batch, 400, chunk=1, order="given",
                                   generator=generator(9))
    marginal = autoregressive_samples(model, batch, 400, chunk=2, generator=generator(9))
    assert float(torch.corrcoef(joint[:, 0, :, 0].T)[0, 1]) > 0.5
    assert abs(float(torch.corrcoef(marginal[:, 0, :, 0].T)[0, 1])) < 0.2


def test_reproducible_with_a_seed_and_independent_of_samples_per_pass():
    model = tiny(seed=2)
    batch = random_batch(B=2, Lc=12, Lt=7, seed=4)
    a = autoregressive_samples(model, batch, 10, chunk=2, generator=generator(1))
    b = autoregressive_samples(model, batch, 10, chunk=2, generator=generator(1),
                               samples_per_pass=3)
    c = autoregressive_samples(model, batch, 10, chunk=2, generator=generator(2))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c)


def test_bad_options_are_refused():
    model = tiny()
    batch = random_batch(B=1, Lc=8, Lt=4, seed=0)
    with pytest.raises(ValueError, match="chunk"):
        autoregressive_samples(model, batch, 2, chunk=0)
    with pytest.raises(ValueError, match="n_samples"):
        autoregressive_samples(model, batch, 0)
    with pytest.raises(ValueError, match="permutation"):
        autoregressive_samples(model, batch, 2, order=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="order"):
        autoregressive_samples(model, batch, 2, order="sorted")
    with pytest.raises(ValueError, match="f_test"):
        autoregressive_log_likelihood(model, batch.map(f_test=None))
    with pytest.raises(ValueError, match="NeuralProcess"):
        autoregressive_samples(torch.nn.Linear(2, 2), batch, 2)


# ------------------------------------------------------------------------ user level
def stations(n: int = 60, seed: int = 0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n)})
    frame["v"] = 20 + 3 * np.sin(frame["x"] / 15) + rng.normal(0, 0.3, n)
    targets = pd.DataFrame({"x": np.linspace(10, 90, 6), "y": np.full(6, 50.0)})
    return frame, targets


@pytest.mark.parametrize("transform", ["none", "log"])
def test_joint_samples_are_in_the_data_units(transform):
    """The first chunk's samples average to Predictor.predict's mean and std (global
    conditioning), in the data's units, through the value transform: mean within 5 s.e.,
    std within 10 % (about 4.5 s.e. at 1,000 samples)."""
    observations, targets = stations(n=40)
    predictor = Predictor.from_pretrained("gp2d")
    roles = dict(values="v", space=("x", "y"), value_transform=transform)
    S = 1000
    draws = joint_samples(predictor, observations, targets, S, chunk=3, order="given",
                          seed=1, samples_per_pass=None, **roles)
    assert draws.shape == (S, 6)
    out = predictor.predict(observations, targets.iloc[:3], neighbours=None, **roles)
    first = draws[:, :3]
    assert np.all(np.abs(first.mean(0) - out["mean"]) < 5 * out["std"] / np.sqrt(S))
    assert np.all(np.abs(first.std(0) / out["std"] - 1) < 0.1)
    assert 15 < draws.mean() < 25
    if transform == "log":
        assert draws.min() > 0


@pytest.mark.filterwarnings("ignore:.*(observations|apart)")
def test_joint_samples_are_reproducible_with_a_seed():
    observations, targets = stations(n=30)
    predictor = Predictor.from_pretrained("gp2d")
    roles = dict(values="v", space=("x", "y"))
    a = joint_samples(predictor, observations, targets, 20, chunk=2, seed=3, **roles)
    b = joint_samples(predictor, observations, targets, 20, chunk=2, seed=3,
                      samples_per_pass=7, **roles)
    c = predictor.joint_samples(observations, targets, 20, chunk=2, seed=4, **roles)
    np.testing.assert_array_equal(
        predictor.joint_samples(observations, targets, 20, chunk=2, seed=3, **roles), a)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="permutation"):
        joint_samples(predictor, observations, targets, 2, order=[0, 1, 2, 3, 4, 4], **roles)
