"""Model families: configs with a family tag, checkpoints and experiments of every family,
and several models evaluated side by side."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import random_batch

from bsatnp.attention import BiasSpec
from bsatnp.baselines import IDW
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, load_experiment
from bsatnp.io.checkpoint import load_model, save_checkpoint
from bsatnp.likelihoods import likelihood_names
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNPConfig
from bsatnp.models.convcnp import ConvCNPConfig
from bsatnp.models.local_average import IDWConfig, KNearestConfig, PersistenceConfig
from bsatnp.models.registry import (
    FAMILIES,
    build_model,
    config_from_dict,
    config_to_dict,
    family_name,
)
from bsatnp.models.tetnp import TETNPConfig
from bsatnp.models.tnpd import TNPDConfig
from bsatnp.reports import markdown_table
from bsatnp.tasks import eval_batches
from bsatnp.tasks.gp2d import GP2DTask

SMALL = {
    "bsatnp": BSATNPConfig(dim=32, num_blocks=1, qkv_dim=32, ffn_dim=32, embed_hidden=(32,),
                           head_hidden=(32,)),
    "tnpd": TNPDConfig(dim=32, num_blocks=1, qkv_dim=32, ffn_dim=32, embed_hidden=(32,),
                       head_hidden=(32,)),
    "tetnp": TETNPConfig(dim=32, num_layers=1, qkv_dim=32, ffn_dim=32, num_pseudo=4),
    "convcnp": ConvCNPConfig(channels=8, points_per_unit=4),
    "idw": IDWConfig(power=3.0),
    "knn": KNearestConfig(k=4),
    "persistence": PersistenceConfig(dim_t=0),
}
TRAINABLE = sorted(name for name, family in FAMILIES.items() if family.model.trainable)
TINY_TASK = GP2DTask(batch_size=2, n_ctx=24, n_test=16, min_ctx=8, max_ctx=23)


def test_every_family_has_a_small_config_here():
    assert set(SMALL) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_config_round_trip_with_family_tag(family):
    config = SMALL[family]
    data = config_to_dict(config)
    assert data["family"] == family == family_name(config)
    assert config_from_dict(data) == config


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_states_its_facts_through_the_contract(family):
    """Role widths, roles, likelihood, geometry and memory per target, without probing fields."""
    model = build_model(SMALL[family])
    config = SMALL[family]
    expected = {role: getattr(config, f"dim_{role}", 0) for role in ("x", "s", "t", "f")}
    assert {role: model.width(role) for role in expected} == expected
    assert model.roles == tuple(r for r in ("x", "s", "t") if expected[r] > 0)
    assert model.likelihood == config.likelihood == "gaussian" and not model.great_circle
    hidden = {"bsatnp": 32 * 5, "tnpd": 32 * 5, "tetnp": 32 * 3 + 128 + 128, "convcnp": 64,
              "idw": 0, "knn": 0, "persistence": 0}
    assert model.bytes_per_target == 16 * max(1024, 3 * hidden[family])
    with pytest.raises(ValueError, match="role must be one of"):
        model.width("q")


def test_families_register_by_decorator_and_names_are_unique():
    from bsatnp.models.base import NeuralProcess, register_family
    from bsatnp.models.tnpd import TNPD

    assert FAMILIES["tnpd"].model is TNPD and FAMILIES["tnpd"].config is TNPDConfig
    assert register_family("tnpd")(TNPD) is TNPD  # registering the same class again is fine

    class Other(NeuralProcess):
        config_class = TNPDConfig

    with pytest.raises(ValueError, match="'tnpd' is taken by TNPD"):
        register_family("tnpd")(Other)
    with pytest.raises(ValueError, match="does not implement"):
        register_family("thing")(dict)
    assert FAMILIES["tnpd"].model is TNPD and "thing" not in FAMILIES


def test_great_circle_is_a_fact_of_the_bias():
    on_sphere = BSATNPConfig(bias_s=BiasSpec(role="s", distance="great_circle_degrees"))
    assert build_model(on_sphere).great_circle
    assert not build_model(replace(on_sphere, use_s="embed")).great_circle


@pytest.mark.parametrize("family", TRAINABLE)
def test_gradients_reach_every_parameter(family):
    torch.manual_seed(0)
    model = build_model(SMALL[family])
    batch = next(eval_batches(TINY_TASK, 1, seed=1))
    masked_nll(model(batch), batch.f_test, batch.test_mask()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("family", TRAINABLE)
def test_adam_steps_reduce_the_loss_on_a_fixed_batch(family):
    torch.manual_seed(0)
    model = build_model(SMALL[family])
    batch = next(eval_batches(replace(TINY_TASK, batch_size=4), 1, seed=2))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


BAD_INPUTS = {  # case: (make the bad input from a good batch, argument the error names)
    "not_a_batch": (lambda b: {"f_ctx": b.f_ctx}, "batch"),
    "no_locations": (lambda b: b.map(s_ctx=None, s_test=None), "s_ctx"),
    "wrong_dim_s": (lambda b: random_batch(dim_s=3), "s_ctx"),
    "wrong_dim_f": (lambda b: random_batch(dim_f=2), "f_ctx"),
    "nan_location": (lambda b: b.map(s_test=b.s_test.clone().fill_(float("nan"))), "s_test"),
    "inf_value": (lambda b: b.map(f_ctx=b.f_ctx.clone().fill_(float("inf"))), "f_ctx"),
    "no_valid_context": (lambda b: b.map(mask_ctx=torch.zeros_like(b.mask_ctx)), "mask_ctx"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bad_input_raises_value_error_naming_the_argument(family, case):
    make, argument = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=argument):
        build_model(SMALL[family])(make(random_batch()))


def test_config_without_family_is_bsatnp_and_unknown_family_fails():
    assert config_from_dict(BSATNPConfig().to_dict()) == BSATNPConfig()
    with pytest.raises(ValueError, match="unknown model family 'gpt'"):
        config_from_dict({"family": "gpt"})
    with pytest.raises(ValueError, match="not the config of a known model family"):
        family_name(object())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_round_trip_rebuilds_the_family(family, tmp_path):
    torch.manual_seed(0)
    model = build_model(SMALL[family]).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    batch = random_batch(Lc=12, Lt=5)
    assert torch.equal(model(batch).mean, loaded(batch).mean)


def test_experiment_model_section_selects_the_family():
    config = ExperimentConfig.from_dict({"model": {"family": "tnpd", "num_blocks": 2}})
    assert config.model == TNPDConfig(num_blocks=2)
    assert ExperimentConfig.from_dict(config.to_dict()).model == config.model
    with pytest.raises(ValueError, match="cfg.yaml: unknown model family"):
        ExperimentConfig.from_dict({"model": {"family": "gpt"}}, source="cfg.yaml")
    with pytest.raises(ValueError, match="cfg.yaml"):
        ExperimentConfig.from_dict({"model": {"family": "tnpd", "use_s": "bias"}},
                                   source="cfg.yaml")


def test_side_by_side_evaluation_shares_batches_and_oracle():
    torch.manual_seed(0)
    model = build_model(SMALL["bsatnp"])
    idw = IDW()  # no parameters at all
    both = evaluate({"bsatnp": model, "idw": idw}, domains=("in_domain",), n_batches=2,
                    task=TINY_TASK, progress=False)["domains"]["in_domain"]
    alone = evaluate(idw, domains=("in_domain",), n_batches=2, task=TINY_TASK,
                     progress=False)["domains"]["in_domain"]
    assert {"bsatnp", "idw", "oracle", "gap/bsatnp", "gap/idw"} <= set(both)
    assert {"model", "oracle", "gap"} <= set(alone)
    assert both["idw"] == alone["model"] and both["oracle"] == alone["oracle"]
    gap = both["gap/idw"]["nll"]["mean"]
    assert gap == pytest.approx(both["idw"]["nll"]["mean"] - both["oracle"]["nll"]["mean"])
    table = markdown_table({"seed": 1000, "domains": {"in_domain": both}})
    assert "| gap/idw |" in table and "| bsatnp |" in table
    with pytest.raises(ValueError, match="oracle"):
        evaluate({"oracle": idw}, domains=("in_domain",), n_batches=1, task=TINY_TASK)


@pytest.mark.parametrize("family", ["tnpd", "tetnp", "convcnp"])
def test_bundled_baseline_configs_differ_from_gp2d_only_in_the_model(family):
    paper, baseline = load_experiment("gp2d"), load_experiment(f"gp2d_{family}")
    assert family_name(baseline.model) == family
    assert baseline.model == FAMILIES[family].config()  # the family's defaults
    assert baseline.task == paper.task and baseline.eval == paper.eval
    assert baseline.train.out_dir == f"runs/gp2d_{family}"
    assert replace(baseline.train, out_dir=paper.train.out_dir) == paper.train


def test_a_stored_former_tnpd_config_reads_as_the_sa_tnp_it_was():
    former = {"family": "tnpd", "dim_s": 2, "dim_f": 1, "obs_dim": 4, "dim": 32,
              "num_blocks": 1, "num_heads": 4, "qkv_dim": 32, "ffn_dim": 32,
              "embed_hidden": [32], "head_hidden": [32], "min_std": 0.0, "ln_eps": 1e-6,
              "backend": "auto", "keys": "context"}
    config = config_from_dict(former)
    assert isinstance(config, BSATNPConfig) and config.use_s == "embed"
    assert config.bias_specs == () and config.dim == 32
    assert isinstance(config_from_dict({"family": "tnpd"}), TNPDConfig)  # the paper's TNP-D


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_a_categorical_head(family):
    from dataclasses import replace

    from torch.distributions import Categorical

    from bsatnp.loss import masked_nll

    torch.manual_seed(0)
    model = build_model(replace(SMALL[family], likelihood="categorical", dim_f=3))
    batch = random_batch(B=2, Lc=12, Lt=5, dim_f=3)
    dist = model(batch)
    assert isinstance(dist, Categorical) and dist.probs.shape == (2, 5, 3)
    if model.trainable:
        masked_nll(dist, batch.f_test, batch.test_mask()).backward()
    assert model.likelihood == "categorical"
    with pytest.raises(ValueError, match="likelihood"):
        build_model(replace(SMALL[family], likelihood="weibull"))


@pytest.mark.parametrize("likelihood", likelihood_names())
@pytest.mark.parametrize("family", TRAINABLE)
def test_every_family_ends_in_every_likelihood(family, likelihood):
    """The head is chosen by config: a step on values drawn from the model's own predictive
    has a finite loss and finite gradients reaching every parameter's tensor."""
    torch.manual_seed(0)
    model = build_model(replace(SMALL[family], likelihood=likelihood))
    batch = random_batch(B=2, Lc=12, Lt=5)
    with torch.no_grad():
        values = model(batch).sample()
    dist = model(batch.map(f_test=values, f_ctx=values[:, :1].expand_as(batch.f_ctx)))
    assert dist.mean.shape == (2, 5, 1) and model.likelihood == likelihood
    loss = masked_nll(dist, values, batch.test_mask())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all())
               for p in model.parameters())
