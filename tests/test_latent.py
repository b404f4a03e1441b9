"""Latent-GP tasks through a link (bsatnp.tasks.latent): reproducible draws in each family's
support, the floor, and a model trained and scored on them end to end."""

from __future__ import annotations

import math

import pytest
import torch

from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, load_experiment
from bsatnp.likelihoods import likelihood_family
from bsatnp.tasks.latent import OBSERVATIONS, LatentGPTask

SMALL = dict(batch_size=4, n_ctx=48, n_test=32, min_ctx=16, max_ctx=47)


@pytest.mark.parametrize("likelihood", OBSERVATIONS)
def test_batches_are_reproducible_in_the_support_and_leave_the_global_rng(likelihood):
    task = LatentGPTask(likelihood=likelihood, **SMALL)
    state = torch.get_rng_state()
    a = task.sample(torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    b, floor = task.sample_with_oracle(torch.Generator().manual_seed(3))
    assert torch.equal(a.f_ctx, b.f_ctx) and torch.equal(a.f_test, b.f_test)
    values = torch.cat([a.f_ctx, a.f_test], 1)
    assert bool((values >= 0).all())
    if likelihood == "binomial":
        assert bool((values <= torch.cat([a.offset_ctx, a.offset_test], 1)).all())
    if likelihood == "beta":
        assert bool((values <= 1).all())
    else:
        assert torch.equal(values, values.round())
        if likelihood == "bernoulli":
            assert set(values.unique().tolist()) <= {0.0, 1.0}
    assert floor.mean.shape == a.f_test.shape
    assert task.model_defaults()["likelihood"] == likelihood


def test_the_floor_is_the_distribution_the_test_values_were_drawn_from():
    """Standardised residuals of the test counts under the floor have mean 0 and variance 1
    (within 5 s.e. over 16 × 256 points)."""
    task = LatentGPTask(likelihood="negative_binomial", batch_size=16, n_ctx=64, n_test=256,
                        min_ctx=16, max_ctx=63)
    batch, floor = task.sample_with_oracle(torch.Generator().manual_seed(0))
    z = ((batch.f_test.double() - floor.mean.double()) / floor.stddev.double()).flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 0.25


def test_a_count_model_trains_and_is_scored_against_the_floor():
    config = ExperimentConfig.from_dict({
        "model": {"num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 16,
                  "embed_hidden": [16], "head_hidden": [16]},
        "task": {"name": "latent_gp", "likelihood": "poisson", **SMALL},
        "train": {"steps": 3, "batch_size": 4}})
    assert config.model.likelihood == "poisson"  # the head follows the task
    model = config.build_model()
    batch = config.task.sample(torch.Generator().manual_seed(0))
    from bsatnp.loss import masked_nll

    loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
    loss.backward()
    assert torch.isfinite(loss)
    results = evaluate(model.eval(), ("in_domain",), 2, seed=5, task=config.task,
                       progress=False)["domains"]["in_domain"]
    assert {"model", "oracle", "gap"} <= set(results)
    assert {"nll", "crps", "deviance", "cov95"} <= set(results["oracle"])
    gap = results["gap"]["nll"]["mean"]
    assert gap == pytest.approx(results["model"]["nll"]["mean"]
                                - results["oracle"]["nll"]["mean"])
    assert likelihood_family("poisson").discrete
    from bsatnp.reports import markdown_table

    table = markdown_table({"seed": 5, "task": "latent_gp",
                            "domains": {"in_domain": results}})
    header = table.splitlines()[0]
    assert "deviance" in header and "crps" in header and "cov50" not in header
    assert "| oracle |" in table


def test_the_bundled_config_reads_and_bad_settings_are_refused():
    config = load_experiment("latent_gp")
    assert config.task.likelihood == config.model.likelihood == "negative_binomial"
    with pytest.raises(ValueError, match="likelihood must be one of"):
        LatentGPTask(likelihood="gaussian")
    with pytest.raises(ValueError, match="intercept"):
        LatentGPTask(intercept=(2.0, 1.0))
