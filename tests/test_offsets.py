"""Exposures and trials (issue 32): the batch's ``offset``, every family reading it, the
latent-GP tasks drawing it, and the user's ``exposure=``/``trials=`` columns giving rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsatnp import Batch
from bsatnp.data.tables import read_points
from bsatnp.joint import autoregressive_log_likelihood, autoregressive_samples
from bsatnp.likelihoods import likelihood_family, value_features
from bsatnp.models import BSATNP
from bsatnp.models.convcnp import ConvCNP
from bsatnp.models.tetnp import TETNP
from bsatnp.models.tnpd import TNPD
from bsatnp.tasks.latent import LatentGPTask

SMALL = dict(batch_size=2, n_ctx=40, n_test=24, min_ctx=10, max_ctx=39)


def count_batch(likelihood: str = "poisson", seed: int = 0) -> Batch:
    task = LatentGPTask(likelihood=likelihood, exposure=None if likelihood == "binomial"
                        else (0.2, 5.0), **SMALL)
    return task.sample(torch.Generator().manual_seed(seed))


def tiny(cls=BSATNP, likelihood: str = "poisson", seed: int = 0):
    torch.manual_seed(seed)
    if cls is BSATNP:
        return BSATNP(num_blocks=2, dim=16, num_heads=2, qkv_dim=16, ffn_dim=32,
                      embed_hidden=(32,), head_hidden=(32,), likelihood=likelihood).eval()
    if cls is ConvCNP:
        return ConvCNP(channels=8, depth=2, likelihood=likelihood).eval()
    return cls(likelihood=likelihood).eval()


FAMILIES = [BSATNP, TNPD, TETNP, ConvCNP]


# ------------------------------------------------------------------------ the batch
def test_offsets_are_checked_and_their_padding_becomes_one():
    batch = count_batch()
    with pytest.raises(ValueError, match="offset_ctx must be positive"):
        batch.map(offset_ctx=batch.offset_ctx * 0).validate()
    with pytest.raises(ValueError, match="offset_test has 2 features"):
        batch.map(offset_test=batch.offset_test.repeat(1, 1, 2)).validate()
    with pytest.raises(ValueError, match="NaN"):
        batch.map(offset_ctx=torch.full_like(batch.offset_ctx, math.nan)).validate()
    padded = batch.map(offset_ctx=torch.where(batch.context_mask()[..., None],
                                              batch.offset_ctx, -5.0))
    padded.validate()  # padding may hold anything
    clean = padded.sanitized()
    assert bool((clean.offset_ctx[~batch.context_mask()] == 1).all())


def test_value_features_are_the_rate_and_the_log_offset():
    f = torch.tensor([[[6.0], [0.0]]])
    offset = torch.tensor([[[2.0], [0.5]]])
    expected = torch.tensor([[[3.0, math.log(2.0)], [0.0, math.log(0.5)]]])
    torch.testing.assert_close(value_features(f, offset), expected)
    torch.testing.assert_close(value_features(f, None), torch.cat([f, 0 * f], -1))


# ------------------------------------------------------------------------ the models
@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_every_family_scales_its_rate_by_the_test_exposure(cls):
    """A Poisson mean is exposure × rate: doubling the targets' exposures doubles it."""
    model, batch = tiny(cls), count_batch()
    with torch.no_grad():
        once = model(batch).mean
        twice = model(batch.map(offset_test=2 * batch.offset_test)).mean
        ones = model(batch.map(offset_test=None)).mean
    torch.testing.assert_close(twice, 2 * once)
    torch.testing.assert_close(once, ones * batch.offset_test)


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_the_context_exposure_is_read(cls):
    """The same counts over other exposures are other rates: the prediction changes."""
    model, batch = tiny(cls), count_batch()
    with torch.no_grad():
        a = model(batch).mean
        b = model(batch.map(offset_ctx=3 * batch.offset_ctx)).mean
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_padded_offsets_are_dropped(cls):
    """Masked = dropped: garbage counts and exposures in padded context slots change
    nothing."""
    model, batch = tiny(cls), count_batch()
    mask = batch.context_mask()[..., None]
    noisy = batch.map(f_ctx=torch.where(mask, batch.f_ctx, 99.0),
                      offset_ctx=torch.where(mask, batch.offset_ctx, 1e-3))
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).mean, model(batch).mean)


def test_conditioning_once_reads_the_test_exposures():
    model, batch = tiny(), count_batch()
    with torch.no_grad():
        direct = model(batch)
        conditioned = model.condition(batch).predictive(
            {"s_test": batch.s_test, "offset_test": batch.offset_test})
    torch.testing.assert_close(conditioned.mean, direct.mean, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="offset_test has 2 features"):
        model.condition(batch).predictive(
            {"s_test": batch.s_test, "offset_test": batch.offset_test.repeat(1, 1, 2)})


def test_a_model_without_an_offset_refuses_one():
    model = tiny(likelihood="gaussian")
    with pytest.raises(ValueError, match="reads no exposure or trials"):
        model(count_batch())


def test_a_binomial_reads_its_trials():
    model, batch = tiny(likelihood="binomial"), count_batch("binomial")
    assert bool((batch.f_ctx <= batch.offset_ctx).all())
    with torch.no_grad():
        dist = model(batch)
    torch.testing.assert_close(dist.total_count, batch.offset_test)
    torch.testing.assert_close(dist.mean, dist.probs * batch.offset_test)


# ------------------------------------------------------------------------ the task
def test_the_task_draws_counts_at_their_exposures():
    """Counts over exposure × rate: the standardised residuals under the floor are
    standard, and the floor's mean is proportional to the exposure."""
    task = LatentGPTask(likelihood="poisson", exposure=(0.2, 5.0), batch_size=16, n_ctx=64,
                        n_test=256, min_ctx=16, max_ctx=63)
    batch, floor = task.sample_with_oracle(torch.Generator().manual_seed(0))
    assert batch.offset_ctx.shape == batch.f_ctx.shape
    e = batch.offset_test.double()
    assert float(e.min()) >= 0.2 - 1e-6 and float(e.max()) <= 5.0 + 1e-6
    z = ((batch.f_test.double() - floor.mean.double()) / floor.stddev.double()).flatten()
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 0.25
    unit = LatentGPTask(likelihood="poisson", batch_size=16, n_ctx=64, n_test=256,
                        min_ctx=16, max_ctx=63).sample_with_oracle(
        torch.Generator().manual_seed(0))[1]
    torch.testing.assert_close(floor.mean, unit.mean * e, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="exposure needs a count likelihood"):
        LatentGPTask(likelihood="beta", exposure=(0.5, 2.0))
    with pytest.raises(ValueError, match="trials"):
        LatentGPTask(likelihood="binomial", trials=(0, 3))


# ------------------------------------------------------------------------ joint draws
@pytest.mark.parametrize("likelihood", ["poisson", "negative_binomial", "binomial", "beta"])
def test_joint_draws_of_every_likelihood_start_from_the_diagonal(likelihood):
    """The first chunk's draws are the diagonal predictive's inverse CDF at Φ(ε), with the
    ε that the generator gives; later draws lie in the support."""
    batch = count_batch(likelihood) if likelihood != "beta" else LatentGPTask(
        likelihood="beta", **SMALL).sample(torch.Generator().manual_seed(0))
    batch = batch.map(mask_ctx=None, mask_test=None, s_test=batch.s_test[:, :8],
                      f_test=batch.f_test[:, :8], offset_test=None if batch.offset_test is None
                      else batch.offset_test[:, :8])
    model = tiny(likelihood=likelihood)
    draws = autoregressive_samples(model, batch, 3, chunk=4, order="given",
                                   generator=torch.Generator().manual_seed(5))
    eps = torch.randn(3, 2, batch.n_test, 1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        first = model(batch.map(s_test=batch.s_test[:, :4], f_test=None, offset_test=None if
                                batch.offset_test is None else batch.offset_test[:, :4]))
    family = likelihood_family(likelihood)
    u = torch.special.ndtr(eps[:, :, :4].double()).clamp(1e-12, 1 - 1e-12)
    expected = torch.stack([family.quantile(first, u[s]) for s in range(3)])
    torch.testing.assert_close(draws[:, :, :4].double(), expected.double(), rtol=1e-4,
                               atol=1e-4)
    low, high = family.bounds
    assert bool((draws >= low).all()) and bool((draws <= high).all())
    if family.discrete:
        assert torch.equal(draws, draws.round())
    if likelihood == "binomial":
        assert bool((draws <= batch.offset_test[None]).all())
    total = autoregressive_log_likelihood(model, batch, chunk=4, order="given")
    assert bool(torch.isfinite(total).all())


def test_joint_draws_of_a_classifier_are_one_hot():
    from conftest import random_batch

    batch = random_batch(B=1, Lc=8, Lt=6, seed=0)
    model = tiny(likelihood="categorical")
    model = BSATNP(**{**model.config.to_dict(), "dim_f": 3}).eval()
    batch = batch.map(f_ctx=torch.nn.functional.one_hot(torch.arange(8) % 3, 3)[None].float(),
                      f_test=None)
    draws = autoregressive_samples(model, batch, 4, chunk=2,
                                   generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4, 1, 6, 3)
    assert torch.equal(draws.sum(-1), torch.ones(4, 1, 6))


# ------------------------------------------------------------------------ own data
def districts(n: int = 150, seed: int = 0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(0, 50, n), "y": rng.uniform(0, 50, n),
                          "population": rng.uniform(2e3, 5e4, n)})
    rate = 1e-3 * np.exp(0.5 * np.sin(frame["x"] / 8))
    frame["cases"] = rng.poisson(frame["population"] * rate)
    targets = frame.iloc[:12][["x", "y", "population"]].reset_index(drop=True)
    return frame, targets


def test_a_count_predictor_gives_rates_per_unit_of_exposure():
    """Outputs are per person: the mean is the model's mean count at the target's exposure
    over it, quantiles likewise, and P(rate > r) = P(count > r·exposure)."""
    from bsatnp.predictor import Predictor

    frame, targets = districts()
    predictor = Predictor(tiny(likelihood="negative_binomial"))
    out = predictor.predict(frame, targets, values="cases", space=("x", "y"),
                            exposure="population", quantiles=(0.5,), exceedance=(1.2e-3,),
                            neighbours=None)
    conditioned = predictor.condition(frame, values="cases", space=("x", "y"),
                                      exposure="population", neighbours=None)
    norm, schema = conditioned.normalizer, conditioned.schema
    assert norm.offset_scale == pytest.approx(float(np.exp(np.log(frame["population"]).mean())))
    inputs = norm.inputs(read_points(targets, schema, "targets", with_values=False)[0], schema)
    with torch.no_grad():
        dist = conditioned.model.predictive({
            "s_test": torch.as_tensor(inputs["s"], dtype=torch.float32)[None],
            "offset_test": torch.as_tensor(inputs["offset"], dtype=torch.float32)[None]})
    population = targets["population"].to_numpy()
    np.testing.assert_allclose(out["expected_count"], dist.mean[0, :, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["mean"], dist.mean[0, :, 0].numpy() / population,
                               rtol=1e-5)
    family = likelihood_family("negative_binomial")
    median = family.quantile(dist, 0.5)[0, :, 0].numpy()
    np.testing.assert_allclose(out["q0.5"], median / population, rtol=1e-5)
    threshold = torch.as_tensor(1.2e-3 * population, dtype=torch.float64)[None, :, None]
    exceed = 1 - family.cdf(dist, threshold)[0, :, 0].numpy()
    np.testing.assert_allclose(out["exceedance_0.0012"], exceed, rtol=1e-4, atol=1e-7)
    local = predictor.predict(frame, targets, values="cases", space=("x", "y"),
                              exposure="population", neighbours=len(frame))
    np.testing.assert_allclose(local["mean"], out["mean"], rtol=1e-4)


def test_bad_exposure_and_trials_are_refused():
    from bsatnp.predictor import Predictor

    frame, targets = districts()
    counts = Predictor(tiny(likelihood="poisson"))
    with pytest.raises(ValueError, match="reads no exposure or trials"):
        Predictor(tiny(likelihood="gaussian")).condition(
            frame, values="cases", space=("x", "y"), exposure="population")
    with pytest.raises(ValueError, match="reads exposure"):
        counts.condition(frame, values="cases", space=("x", "y"), trials="population")
    with pytest.raises(ValueError, match="must be positive"):
        counts.condition(frame.assign(population=0.0), values="cases", space=("x", "y"),
                         exposure="population")
    conditioned = counts.condition(frame, values="cases", space=("x", "y"),
                                   exposure="population", neighbours=None)
    with pytest.raises(ValueError, match="population"):
        conditioned.predict(targets.drop(columns="population"))
    with pytest.warns(UserWarning, match="or exposure"):  # a count without its exposure
        Predictor(tiny(likelihood="poisson")).condition(
            frame.assign(population=frame["population"].where(frame.index > 0)),
            values="cases", space=("x", "y"), exposure="population", neighbours=None)
    binomial = Predictor(tiny(likelihood="binomial"))
    with pytest.raises(ValueError, match="successes out of whole trials"):
        binomial.condition(frame.assign(tested=frame["cases"] + 0.5), values="cases",
                           space=("x", "y"), trials="tested")


def test_joint_samples_and_areal_aggregates_of_rates():
    """Joint draws of a count model are per unit of exposure; an area's exposure-weighted
    mean rate is its total count over its total exposure in every draw."""
    from bsatnp import aggregate
    from bsatnp.predictor import Predictor

    frame, targets = districts()
    predictor = Predictor(tiny(likelihood="poisson"))
    draws = predictor.joint_samples(frame, targets, 40, values="cases", space=("x", "y"),
                                    exposure="population", chunk=4, seed=1)
    population = targets["population"].to_numpy()
    counts = draws * population
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)
    areas = np.repeat(["a", "b", "c"], 4)
    rates = aggregate(draws, areas, statistic="mean", weights=population, interval=0.8)
    totals = aggregate(counts, areas, statistic="sum", interval=0.8)
    for area in "abc":
        members = areas == area
        np.testing.assert_allclose(rates.loc[area, "mean"] * population[members].sum(),
                                   totals.loc[area, "mean"], rtol=1e-9)
        per_draw = counts[:, members].sum(1)
        assert totals.loc[area, "lower"] == pytest.approx(np.quantile(per_draw, 0.1))
        assert totals.loc[area, "n_targets"] == 4
    with pytest.raises(ValueError, match="weights weigh a mean"):
        aggregate(draws, areas, weights=population)
    with pytest.raises(ValueError, match="one group per target"):
        aggregate(draws, areas[:3])


@pytest.mark.parametrize("split", ["random", "gap"])
def test_finetuning_a_count_model_reads_the_exposures(split, tmp_path):
    """The table task's batches carry the rows' exposures (counts are never framed), and
    the tuned predictor keeps the exposure column."""
    from bsatnp.data.table_task import TableTask
    from bsatnp.predictor import Predictor

    frame, targets = districts()
    seen = []
    original = TableTask.sample

    def spy(self, generator=None, split="train"):
        batch = original(self, generator, split)
        seen.append(batch)
        return batch

    TableTask.sample = spy
    try:
        tuned = Predictor(tiny(likelihood="poisson")).finetune(
            frame, values="cases", space=("x", "y"), exposure="population", steps=2,
            n_ctx=32, n_test=16, batch_size=2, split=split, out_dir=tmp_path / split,
            progress=False)
    finally:
        TableTask.sample = original
    batch = seen[0]
    assert batch.offset_ctx is not None and batch.offset_test is not None
    assert torch.equal(batch.f_ctx, batch.f_ctx.round())  # counts, not framed values
    assert tuned.schema.offset == "population"
    out = tuned.predict(frame, targets, neighbours=None)
    assert {"mean", "expected_count"} <= set(out.columns)


def test_the_cli_predicts_rates_with_an_exposure_column(tmp_path):
    from bsatnp import cli
    from bsatnp.predictor import Predictor

    pd = pytest.importorskip("pandas")
    frame, targets = districts()
    frame.to_csv(tmp_path / "obs.csv", index=False)
    targets.to_csv(tmp_path / "targets.csv", index=False)
    Predictor(tiny(likelihood="poisson")).save(tmp_path / "counts.safetensors")
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "counts.safetensors"),
                     "--observations", str(tmp_path / "obs.csv"), "--targets",
                     str(tmp_path / "targets.csv"), "--values", "cases", "--space", "x", "y",
                     "--exposure", "population", "--exceedance", "0.001",
                     "--output", str(tmp_path / "rates.csv"), "--quiet"]) == 0
    rates = pd.read_csv(tmp_path / "rates.csv")
    np.testing.assert_allclose(rates["mean"] * targets["population"], rates["expected_count"],
                               rtol=1e-5)
    assert rates["exceedance_0.001"].between(0, 1).all()


def test_exposures_are_scaled_between_the_training_rate_and_exposure():
    """With a card's centre (log rate 1.5, log exposure 0), data of rate 1e-3 per person
    and populations of geometric mean 2e4 get the scale that puts them half-way: the
    model-unit log rate and log exposure miss their centres by the same amount."""
    from bsatnp.tasks.frames import OffsetCentre

    centre = OffsetCentre(log_rate=1.5, log_offset=0.0)
    scale = centre.scale(math.log(1e-3), math.log(2e4))
    rate_gap = (math.log(1e-3) + math.log(scale)) - 1.5
    offset_gap = (math.log(2e4) - math.log(scale)) - 0.0
    assert rate_gap == pytest.approx(offset_gap)
    assert scale == pytest.approx(math.exp((math.log(2e4) + 1.5 - math.log(1e-3)) / 2))
    assert centre.scale(None, math.log(2e4)) == pytest.approx(2e4)


def test_a_gaussian_predictor_becomes_a_count_predictor_to_finetune(tmp_path):
    """with_likelihood keeps the shared weights (the attention is the Gaussian model's) and
    the CLI's finetune --likelihood trains the count model on the user's table."""
    from bsatnp import cli
    from bsatnp.predictor import Predictor

    gaussian = Predictor(tiny(likelihood="gaussian"), card={"summary": "g", "envelope": {
        "space_half_width": 2.0, "values": {"mean": [0.0], "std": [1.0]}}})
    counts = gaussian.with_likelihood("negative_binomial")
    assert counts.model.likelihood == "negative_binomial" and counts.schema is None
    assert "values" not in counts.card["envelope"]
    source, target = gaussian.model.state_dict(), counts.model.state_dict()
    for name, weight in source.items():
        shared = tuple(slice(0, min(a, b)) for a, b in zip(target[name].shape, weight.shape))
        torch.testing.assert_close(target[name][shared], weight[shared], rtol=0, atol=0)
    frame, _ = districts()
    frame.to_csv(tmp_path / "districts.csv", index=False)
    gaussian.save(tmp_path / "gaussian.safetensors")
    assert cli.main(["finetune", "--checkpoint", str(tmp_path / "gaussian.safetensors"),
                     "--data", str(tmp_path / "districts.csv"), "--values", "cases",
                     "--space", "x", "y", "--exposure", "population", "--likelihood",
                     "poisson", "--steps", "2", "--n-ctx", "32", "--batch-size", "2",
                     "--out", str(tmp_path / "run"), "--quiet"]) == 0
    tuned = Predictor.load(tmp_path / "run" / "last.safetensors")
    assert tuned.model.likelihood == "poisson" and tuned.schema.offset == "population"


def test_a_local_average_of_counts_weighs_the_rates_and_scales_by_the_exposure():
    """IDW of counts: λ = Σ w_i f_i / e_i by hand (inverse squared distances), the
    Poisson mean e·λ at the target's exposure; masked = dropped; a binomial's share."""
    from bsatnp.models.local_average import IDW

    s_ctx = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    f_ctx = torch.tensor([[[4.0], [9.0], [1.0], [50.0]]])
    e_ctx = torch.tensor([[[2.0], [3.0], [0.5], [1.0]]])
    mask = torch.tensor([[True, True, True, False]])
    s_test = torch.tensor([[[0.5, 0.5]]])
    batch = Batch(s_ctx=s_ctx, f_ctx=f_ctx, offset_ctx=e_ctx, mask_ctx=mask, s_test=s_test,
                  offset_test=torch.tensor([[[4.0]]]))
    model = IDW(power=2.0, likelihood="poisson")
    d2 = ((s_ctx[0, :3] - s_test[0, 0]) ** 2).sum(-1)
    w = (1 / d2) / (1 / d2).sum()
    rate = float((w * (f_ctx[0, :3, 0] / e_ctx[0, :3, 0])).sum())
    with torch.no_grad():
        dist = model(batch)
    assert float(dist.mean) == pytest.approx(4.0 * rate, rel=1e-5)
    assert isinstance(dist, torch.distributions.Poisson)
    binomial = IDW(power=2.0, likelihood="binomial", smoothing=1e-9)
    with torch.no_grad():
        share = binomial(batch.map(f_ctx=torch.tensor([[[1.0], [3.0], [0.0], [0.0]]]),
                                   offset_ctx=torch.tensor([[[2.0], [3.0], [1.0], [9.0]]])))
    expected = float((w * torch.tensor([0.5, 1.0, 0.0])).sum())
    assert float(share.probs) == pytest.approx(expected, rel=1e-5)
    assert float(share.total_count) == 4.0


def test_evaluate_meets_a_count_task_with_poisson_local_averages():
    """bsatnp evaluate --baselines on a negative-binomial task: each local average is a
    Poisson of the local rate, scored through its own family beside the model."""
    from bsatnp.baselines import calibrated_local_averages
    from bsatnp.evaluate import model_metrics

    task = LatentGPTask(likelihood="negative_binomial", exposure=(0.2, 5.0), **SMALL)
    batches = [task.sample(torch.Generator().manual_seed(i)) for i in range(2)]
    averages = calibrated_local_averages(["idw", "knn", "persistence"], batches,
                                         "negative_binomial")
    for model in averages.values():
        assert model.likelihood == "poisson"
        scores = model_metrics(model, batches[0], "negative_binomial")
        assert math.isfinite(scores["nll"]) and math.isfinite(scores["deviance"])
