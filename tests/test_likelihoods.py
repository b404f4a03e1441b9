"""Likelihood families (bsatnp.likelihoods): every family against scipy on hand-picked
parameters — log-density, CDF, quantiles, CRPS — sampling moments, the edges of each
support, and masked = dropped; betainc against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsatnp.likelihoods import betainc, likelihood_family, likelihood_names
from bsatnp.loss import masked_nll

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")
integrate = pytest.importorskip("scipy.integrate")

softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731

RAW = {  # family: raw head outputs of one value (one row per parameter set)
    "gaussian": [[0.3, -0.5], [-2.0, 1.5]],
    "student_t": [[0.3, -0.5, 0.2], [1.0, 0.4, -3.0]],
    "gaussian_mixture": [[0.2, -0.3, 0.1, -1.0, 0.5, 2.0, -0.4, 0.3, 0.0],
                         [1.0, 1.0, -2.0, 0.0, 0.1, 0.2, 0.5, -1.0, 0.0]],
    "poisson": [[0.7], [-1.5]],
    "negative_binomial": [[1.2, 0.3], [-0.5, -1.0]],
    "zip": [[1.0, -0.8], [0.2, 0.5]],
    "zinb": [[1.2, 0.3, -0.5], [0.4, -1.0, 0.2]],
    "bernoulli": [[0.4], [-2.0]],
    "binomial": [[0.4], [-1.2]],
    "beta": [[0.3, 1.2], [-1.0, -0.5]],
}
TRIALS = 7.0  # the binomial's offset
VALUES = {  # values to score, edges of the support included
    "gaussian": [-1.0, 0.0, 2.5], "student_t": [-4.0, 0.3, 6.0],
    "gaussian_mixture": [-2.0, 0.0, 1.5], "poisson": [0.0, 1.0, 6.0],
    "negative_binomial": [0.0, 2.0, 11.0], "zip": [0.0, 1.0, 5.0], "zinb": [0.0, 3.0, 9.0],
    "bernoulli": [0.0, 1.0], "binomial": [0.0, 3.0, 7.0], "beta": [0.0, 0.2, 0.85, 1.0],
}


def reference(name: str, raw: list[float]):
    """The scipy distribution of one parameter set, mapped by hand (module doc's links)."""
    if name == "gaussian":
        return stats.norm(raw[0], softplus(raw[1]))
    if name == "student_t":
        return stats.t(2 + softplus(raw[2]) + 1e-3, raw[0], softplus(raw[1]))
    if name == "gaussian_mixture":
        return None  # checked through its own sum of Gaussians
    if name == "poisson":
        return stats.poisson(math.exp(raw[0]))
    if name in ("negative_binomial", "zinb"):
        mean, r = math.exp(raw[0]), softplus(raw[1]) + 1e-6
        return stats.nbinom(r, r / (r + mean))
    if name == "zip":
        return stats.poisson(math.exp(raw[0]))
    if name == "bernoulli":
        return stats.bernoulli(sigmoid(raw[0]))
    if name == "binomial":
        return stats.binom(TRIALS, sigmoid(raw[0]))
    if name == "beta":
        m, phi = sigmoid(raw[0]), softplus(raw[1]) + 1e-6
        return stats.beta(m * phi, (1 - m) * phi)
    raise AssertionError(name)


def zero_share(name: str, raw: list[float]) -> float:
    if name == "zip":
        return sigmoid(raw[1])
    return sigmoid(raw[2]) if name == "zinb" else 0.0


def mixture_parts(raw: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits, means, scales = np.array(raw[:3]), np.array(raw[3:6]), np.array(raw[6:])
    weights = np.exp(logits - logits.max())
    return weights / weights.sum(), means, np.log1p(np.exp(scales))


def ref_logpdf(name: str, raw: list[float], y: float) -> float:
    if name == "gaussian_mixture":
        w, mu, sd = mixture_parts(raw)
        return float(np.log((w * stats.norm(mu, sd).pdf(y)).sum()))
    dist, pi = reference(name, raw), zero_share(name, raw)
    if name == "beta":
        return float(dist.logpdf(min(max(y, 1e-6), 1 - 1e-6)))
    if dist.__class__.__name__ == "rv_continuous_frozen" or name in ("gaussian", "student_t"):
        return float(dist.logpdf(y))
    pmf = dist.pmf(y)
    return float(np.log(pi * (y == 0) + (1 - pi) * pmf))


def ref_cdf(name: str, raw: list[float], y: float) -> float:
    if name == "gaussian_mixture":
        w, mu, sd = mixture_parts(raw)
        return float((w * stats.norm(mu, sd).cdf(y)).sum())
    pi = zero_share(name, raw)
    return float(pi * (y >= 0) + (1 - pi) * reference(name, raw).cdf(y))


def made(name: str, raw: list[float]):
    family = likelihood_family(name)
    offset = torch.tensor([[TRIALS]], dtype=torch.float64) if name == "binomial" else None
    return family, family.distribution(torch.tensor([raw], dtype=torch.float64), 0.0, offset)


@pytest.mark.parametrize("name", sorted(RAW))
def test_log_density_and_cdf_match_scipy(name):
    for raw in RAW[name]:
        family, dist = made(name, raw)
        for y in VALUES[name]:
            value = torch.tensor([[y]], dtype=torch.float64)
            assert float(dist.log_prob(value)) == pytest.approx(ref_logpdf(name, raw, y),
                                                                abs=1e-6, rel=1e-6), (raw, y)
            assert float(family.cdf(dist, value)) == pytest.approx(ref_cdf(name, raw, y),
                                                                   abs=1e-7), (raw, y)


@pytest.mark.parametrize("name", sorted(RAW))
def test_quantiles_invert_the_cdf(name):
    levels = (0.025, 0.3, 0.5, 0.9, 0.975)
    for raw in RAW[name]:
        family, dist = made(name, raw)
        for level in levels:
            q = family.quantile(dist, level)
            if family.discrete:
                assert float(family.cdf(dist, q)) >= level - 1e-12
                assert float(family.cdf(dist, q - 1)) < level
                assert float(q) == float(q.round())
            else:
                assert float(family.cdf(dist, q)) == pytest.approx(level, abs=1e-7)


@pytest.mark.parametrize("name", sorted(RAW))
def test_crps_is_the_integral_of_the_squared_cdf_difference(name):
    """CRPS(F, y) = ∫ (F(x) − 1{y ≤ x})² dx, integrated numerically with scipy."""
    for raw in RAW[name]:
        family, dist = made(name, raw)
        for y in VALUES[name]:
            got = float(family.crps(dist, torch.tensor([[y]], dtype=torch.float64)))
            if family.discrete:
                top = int(max(y, 200))
                ks = np.arange(top + 1)
                F = np.array([ref_cdf(name, raw, float(k)) for k in ks])
                expected = float(((F - (y <= ks)) ** 2).sum())
            else:
                lo, hi = family.bounds
                lo, hi = (lo, hi) if math.isfinite(lo) else (-60.0, 60.0)
                def integrand(x, raw=raw, y=y):
                    return (ref_cdf(name, raw, x) - (y <= x)) ** 2
                points = [y] if lo < y < hi else None
                expected = integrate.quad(integrand, lo, hi, points=points, limit=400)[0]
            assert got == pytest.approx(expected, rel=2e-3, abs=2e-4), (raw, y)


@pytest.mark.parametrize("name", sorted(RAW))
def test_samples_have_the_stated_mean_and_std(name):
    torch.manual_seed(0)
    n = 40_000
    for raw in RAW[name]:
        _, dist = made(name, raw)
        if name == "student_t" and float(dist.df) < 5:
            continue  # no finite 4th moment: the sample std does not settle (ν ≈ 2.05 here)
        draws = dist.sample((n,)).double()
        mean, std = float(dist.mean), float(dist.stddev)
        assert abs(float(draws.mean()) - mean) < 5 * std / math.sqrt(n) + 1e-9, raw
        assert float(draws.std()) == pytest.approx(std, rel=0.05), raw


@pytest.mark.parametrize("name", sorted(RAW))
def test_gradients_are_finite_at_the_edges_of_the_support(name):
    edges = {"poisson": 0.0, "negative_binomial": 0.0, "zip": 0.0, "zinb": 0.0,
             "bernoulli": 1.0, "binomial": TRIALS, "beta": 0.0}
    for value in {edges.get(name, 0.0), 1.0 if name == "beta" else 0.0}:
        raw = torch.tensor([RAW[name][0]], dtype=torch.float64, requires_grad=True)
        family = likelihood_family(name)
        offset = torch.tensor([[TRIALS]], dtype=torch.float64) if name == "binomial" else None
        nll = -family.distribution(raw, 0.0, offset).log_prob(
            torch.tensor([[value]], dtype=torch.float64)).sum()
        nll.backward()
        assert torch.isfinite(nll) and bool(torch.isfinite(raw.grad).all()), (name, value)


@pytest.mark.parametrize("name", sorted(RAW))
def test_masked_points_count_as_dropped(name):
    family = likelihood_family(name)
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(2, 6, family.outputs, generator=generator)
    offset = torch.full((2, 6, 1), TRIALS) if name == "binomial" else None
    dist = family.distribution(raw, 0.0, offset)
    values = dist.sample()
    mask = torch.tensor([[True, True, False, True, False, True]] * 2)
    garbage = torch.where(mask[..., None], values, torch.nan)
    kept = family.distribution(raw[mask][None], 0.0, None if offset is None
                               else offset[mask][None])
    assert torch.allclose(masked_nll(dist, garbage, mask),
                          masked_nll(kept, values[mask][None], torch.ones(1, 8, dtype=torch.bool)))


def test_every_likelihood_but_categorical_is_registered():
    from bsatnp.likelihoods import LIKELIHOODS

    assert set(likelihood_names()) == set(LIKELIHOODS) - {"categorical"} == set(RAW)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        likelihood_family("weibull")


def test_betainc_matches_scipy():
    a = torch.tensor([0.3, 0.5, 1.0, 2.5, 7.0, 40.0, 0.5, 3.0], dtype=torch.float64)
    b = torch.tensor([0.4, 8.0, 1.0, 2.5, 0.5, 30.0, 0.5, 120.0], dtype=torch.float64)
    for x in (0.0, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
        got = betainc(a, b, torch.full_like(a, x)).numpy()
        np.testing.assert_allclose(got, special.betainc(a.numpy(), b.numpy(), x),
                                   rtol=1e-9, atol=1e-12)


def test_a_count_model_is_scored_through_its_family():
    """model_metrics scores any registered likelihood: the NLL is the masked mean of
    −log p, the CRPS the family's, and the counts' deviance is hand-computed here."""
    from conftest import random_batch

    from bsatnp.evaluate import model_metrics
    from bsatnp.metrics import distribution_metrics
    from bsatnp.models import BSATNP

    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=16, embed_hidden=(16,),
                   head_hidden=(16,), likelihood="poisson").eval()
    batch = random_batch(B=2, Lc=10, Lt=6)
    with torch.no_grad():
        dist = model(batch)
        counts = dist.sample()
    batch = batch.map(f_test=counts, mask_test=torch.tensor([[True] * 6, [True] * 3 + [False] * 3]))
    scores = model_metrics(model, batch, "poisson")
    keep = batch.test_mask()
    y, mu = counts[keep].double(), dist.mean[keep].double()
    assert scores["nll"] == pytest.approx(float(-dist.log_prob(counts)[keep].double().mean()),
                                          rel=1e-6)
    deviance = 2 * (torch.where(y > 0, y * (y / mu).log(), 0.0) - (y - mu))
    assert scores["deviance"] == pytest.approx(float(deviance.mean()), rel=1e-6)
    family = likelihood_family("poisson")
    assert scores["crps"] == pytest.approx(float(family.crps(dist, counts)[keep].mean()),
                                           rel=1e-9)
    assert scores == distribution_metrics(family, dist, counts, keep)
    assert 0.0 <= scores["cov90"] <= scores["cov95"] <= 1.0


def small_count_model(likelihood: str = "poisson"):
    from bsatnp.models import BSATNP

    torch.manual_seed(0)
    return BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=16, embed_hidden=(16,),
                  head_hidden=(16,), likelihood=likelihood).eval()


def counts_table(n: int = 60, seed: int = 0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"lon": rng.uniform(0, 10, n), "lat": rng.uniform(0, 5, n),
                         "cases": rng.poisson(4.0, n).astype(float)})


def test_a_count_model_predicts_in_the_data_units_through_the_own_data_road():
    """Counts are not standardised: the Predictor's outputs are the model's Poisson
    predictive on the same points (mean, std), its quantiles (integers), P(count > t)
    = 1 − F(t) and integer samples; local conditioning with K >= n equals global."""
    pd = pytest.importorskip("pandas")
    from bsatnp import Batch, Predictor

    obs = counts_table()
    targets = pd.DataFrame({"lon": [1.0, 5.0, 9.5], "lat": [0.5, 2.5, 4.0]})
    predictor = Predictor(small_count_model())
    roles = dict(values="cases", space=("lon", "lat"))
    out = predictor.predict(obs, targets, neighbours=None, quantiles=(0.1, 0.5, 0.9),
                            exceedance=(3.0, 8.0), n_samples=50, seed=1, **roles)
    schema, points, normalizer = predictor.observations(obs, **roles)
    assert normalizer.value_shift == (0.0,) and normalizer.value_scale == (1.0,)
    context = normalizer.inputs(points, schema)
    from bsatnp.data.tables import read_points
    test_points, _ = read_points(targets, schema, "targets", with_values=False)
    test = normalizer.inputs(test_points, schema)
    batch = Batch(s_ctx=torch.tensor(context["s"], dtype=torch.float32)[None],
                  f_ctx=torch.tensor(context["f"], dtype=torch.float32)[None],
                  s_test=torch.tensor(test["s"], dtype=torch.float32)[None])
    with torch.no_grad():
        dist = predictor.model(batch)
    family = likelihood_family("poisson")
    np.testing.assert_allclose(out["mean"], dist.mean[0, :, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["std"], dist.stddev[0, :, 0].numpy(), rtol=1e-5)
    for level in (0.1, 0.5, 0.9):
        np.testing.assert_array_equal(out[f"q{level}"],
                                      family.quantile(dist, level)[0, :, 0].numpy())
    for t in (3.0, 8.0):
        expected = 1 - family.cdf(dist, torch.full_like(dist.mean, t))[0, :, 0].numpy()
        np.testing.assert_allclose(out[f"exceedance_{t}"], expected, rtol=1e-5, atol=1e-7)
    samples = out[[f"sample_{i}" for i in range(50)]].to_numpy()
    assert (samples >= 0).all() and (samples == np.round(samples)).all()
    again = predictor.predict(obs, targets, neighbours=None, n_samples=50, seed=1, **roles)
    np.testing.assert_array_equal(again[[f"sample_{i}" for i in range(50)]].to_numpy(), samples)
    local = predictor.predict(obs, targets, neighbours=len(obs), **roles)
    np.testing.assert_allclose(local["mean"], out["mean"], rtol=1e-4)


@pytest.mark.parametrize(("likelihood", "bad", "message"), [
    ("poisson", -1.0, "integers >= 0"), ("poisson", 2.5, "integers >= 0"),
    ("bernoulli", 2.0, "integers 0 or 1"), ("beta", 1.5, r"within \[0, 1\]")])
def test_values_outside_the_likelihood_support_are_refused(likelihood, bad, message):
    from bsatnp import Predictor

    obs = counts_table(20)
    obs["cases"] = np.where(np.arange(20) == 7, bad, 0.0 if likelihood != "beta" else 0.5)
    with pytest.raises(ValueError, match=message):
        Predictor(small_count_model(likelihood)).predict(
            obs, obs[["lon", "lat"]], values="cases", space=("lon", "lat"))
    with pytest.raises(ValueError, match="value_transform"):
        Predictor(small_count_model()).predict(
            counts_table(20), obs[["lon", "lat"]], values="cases", space=("lon", "lat"),
            value_transform="log1p")
