"""SIR (PROTOCOLS §5): the lattice simulator, the task, categorical metrics and evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig
from bsatnp.experiment_trainer import build_trainer
from bsatnp.metrics import categorical_metrics
from bsatnp.reports import markdown_table
from bsatnp.tasks.priors import Fixed
from bsatnp.tasks.sir import (
    INFECTED,
    RECOVERED,
    SUSCEPTIBLE,
    SIRSimulator,
    SIRTask,
    pressure_kernel,
    run_sir,
)


def test_pressure_kernel_closed_form():
    k = pressure_kernel()
    assert k.shape == (9, 9) and k[4, 4] == 0
    assert k[4, 5] == 1.0 and k[3, 3] == 0.5 and k[0, 0] == pytest.approx(1 / 32)
    assert k[4, 0] == pytest.approx(1 / 16) and torch.equal(k, k.T) and torch.equal(k, k.flip(0))


def test_initial_state_has_one_to_four_infected_cells():
    sim = SIRSimulator(height=16, width=12)
    state = sim.initial_state(500, torch.Generator().manual_seed(0))
    counts = (state == INFECTED).flatten(1).sum(1)
    assert state.shape == (500, 16, 12) and state.dtype == torch.int8
    assert counts.min() == 1 and counts.max() == 4
    assert ((state == SUSCEPTIBLE) | (state == INFECTED)).all()


def test_states_only_move_forward_and_runs_are_reproducible():
    sim = SIRSimulator(height=32, width=32, n_frames=25)
    frames, beta, gamma = sim.simulate(6, torch.Generator().manual_seed(3))
    again, _, _ = sim.simulate(6, torch.Generator().manual_seed(3))
    assert frames.shape == (6, 25, 32, 32) and torch.equal(frames, again)
    assert (frames[:, 1:] >= frames[:, :-1]).all()  # S → I → R only (0 → 1 → 2)
    assert ((0 < beta) & (beta < 1)).all() and (gamma > 0).all()
    assert (frames[:, -1] != SUSCEPTIBLE).sum() > (frames[:, 0] != SUSCEPTIBLE).sum()


def test_certain_infection_reaches_exactly_the_kernel_neighbourhood():
    state = torch.zeros(1, 15, 15, dtype=torch.int8)
    state[0, 7, 7] = INFECTED
    frames = run_sir(state, torch.tensor([100.0]), torch.tensor([0.0]), 3)
    step1 = frames[0, 1]
    expect = torch.zeros(15, 15, dtype=torch.bool)
    expect[3:12, 3:12] = True  # within the 9×9 kernel: pressure ≥ 1/32, β·ν ≥ 3
    assert torch.equal(step1 == INFECTED, expect)
    assert (frames[0, 2] == INFECTED).all()  # one more step covers the 15×15 lattice


def test_no_infection_without_rate_and_recovery_from_the_previous_state():
    sim = SIRSimulator(height=10, width=10, n_frames=2, beta_prior=Fixed(0.0),
                       gamma_prior=Fixed(1.0))
    frames, _, _ = sim.simulate(4, torch.Generator().manual_seed(1))
    assert torch.equal(frames[:, 1] == RECOVERED, frames[:, 0] == INFECTED)
    assert not (frames[:, 1] == INFECTED).any()
    far = torch.zeros(1, 20, 20, dtype=torch.int8)
    far[0, 0, 0] = INFECTED  # cells more than 4 away feel no pressure
    out = run_sir(far, torch.tensor([100.0]), torch.tensor([0.0]), 2)
    assert (out[0, 1, 5:, :] == SUSCEPTIBLE).all() and (out[0, 1, :, 5:] == SUSCEPTIBLE).all()


# ------------------------------------------------------------------------ the task
def test_sir_task_batches_share_cells_and_test_contains_the_context():
    task = SIRTask(batch_size=4, side=16, n_frames=6, n_ctx=40, min_ctx=10, max_ctx=39,
                   n_test=100)
    batch = task.sample(torch.Generator().manual_seed(0))
    batch.validate(required_roles=("s",), need_f_test=True)
    assert batch.f_ctx.shape == (4, 40, 3) and batch.f_test.shape == (4, 100, 3)
    assert torch.equal(batch.f_test.sum(-1), torch.ones(4, 100))  # one-hot
    assert torch.equal(batch.s_ctx, batch.s_ctx[:1].expand_as(batch.s_ctx))  # shared cells
    assert torch.equal(batch.s_test[:, :40], batch.s_ctx)  # context slots come first
    assert torch.equal(batch.f_test[:, :40], batch.f_ctx)
    counts = batch.context_mask().sum(1)
    assert ((counts >= 10) & (counts <= 39)).all()
    grid = torch.linspace(-2, 2, 16)
    assert set(batch.s_test[0, :, 0].tolist()) <= set(grid.tolist())
    assert task.model_defaults()["dim_f"] == 3 and task.likelihood == "categorical"


def test_sir_domains_shift_and_scale_the_lattice():
    task = SIRTask(side=16, n_frames=4, n_ctx=40, min_ctx=10, max_ctx=39, n_test=60,
                   scaled_side=32, scaled_frames=5, scaled_min_ctx=40)
    shifted = task.domain("shifted").sample(torch.Generator().manual_seed(1))
    plain = task.sample(torch.Generator().manual_seed(1))
    assert torch.allclose(shifted.s_ctx, plain.s_ctx + 10) and torch.equal(shifted.f_ctx,
                                                                             plain.f_ctx)
    big = task.domain("scaled")
    assert (big.side, big.n_ctx, big.n_test, big.min_ctx, big.max_ctx, big.box) == (
        32, 160, 240, 40, 159, (-4.0, 4.0))
    assert big.sample(torch.Generator().manual_seed(2)).s_test.abs().max() == 4.0


def test_categorical_metrics_by_hand():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]]])
    target = torch.nn.functional.one_hot(torch.tensor([[0, 2, 1]]), 3).float()
    mask = torch.tensor([[True, True, False]])  # the third point does not count
    m = categorical_metrics(probs, target, mask)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert m["acc"] == pytest.approx(0.5) and m["acc/0"] == 1.0 and m["acc/2"] == 0.0
    assert math.isnan(m["acc/1"])
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.6**2 + 0.7**2)) / 2
    assert m["brier"] == pytest.approx(brier)
    assert m["ece"] == pytest.approx((abs(1 - 0.7) + abs(0 - 0.6)) / 2)  # one point per bin


def test_sir_experiment_trains_and_evaluates_with_categorical_metrics(tmp_path):
    config = ExperimentConfig.from_dict({
        "model": {"num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 32,
                  "bias_s": {"family": "tisa"}},
        "task": {"name": "sir", "batch_size": 2, "side": 12, "n_frames": 5, "n_ctx": 30,
                 "min_ctx": 5, "max_ctx": 29, "n_test": 50, "scaled_side": 24,
                 "scaled_frames": 6, "scaled_min_ctx": 20},
        "train": {"steps": 2, "batch_size": 2, "val_every": 2, "val_batches": 1,
                  "out_dir": str(tmp_path)},
        "eval": {"n_batches": 2},
    })
    assert config.model.likelihood == "categorical" and config.model.dim_f == 3
    trainer = build_trainer(config)
    trainer.fit(progress=False)
    results = evaluate(trainer.model, n_batches=2, task=config.task, progress=False)
    entry = results["domains"]["scaled"]
    assert {"nll", "acc", "brier", "ece"} <= set(entry["model"]) and "oracle" not in entry
    assert 0 <= entry["model"]["acc"]["mean"] <= 1
    header = markdown_table(results).splitlines()[0]
    assert "| acc | brier | ece |" in header and "rmse" not in header
    assert abs(results["domains"]["shifted"]["vs_in_domain"]["nll"]["mean"]) < 1e-4


def test_bundled_sir_config_is_the_paper_model():
    from bsatnp.experiment import load_experiment

    experiment = load_experiment("sir")
    model = experiment.build_model()
    assert experiment.model.bias_s.family == "tisa" and experiment.model.likelihood == "categorical"
    small = SIRTask(batch_size=1, side=8, n_frames=3, n_ctx=10, min_ctx=2, max_ctx=9, n_test=20)
    with torch.no_grad():
        dist = model(small.sample(torch.Generator().manual_seed(0)))
    assert dist.probs.shape == (1, 20, 3)


def test_predict_writes_class_probabilities_and_the_most_likely_class(tmp_path):
    import csv

    from bsatnp import cli
    from bsatnp.io.checkpoint import save_checkpoint
    from bsatnp.models import BSATNP

    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, dim_f=3,
                   likelihood="categorical")
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model)
    points = tmp_path / "points.csv"
    points.write_text("split,s0,s1,f0,f1,f2\ncontext,0,0,1,0,0\ncontext,1,0,0,0,1\n"
                      "test,0.5,0,,,\ntest,2,2,,,\n")
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--input", str(points),
                     "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["s0", "s1", "prob0", "prob1", "prob2", "class"]
    for row in rows:
        probs = [float(row[f"prob{c}"]) for c in range(3)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert int(row["class"]) == max(range(3), key=probs.__getitem__)


def test_plot_draws_the_lattice_classes_and_entropy(tmp_path):
    from bsatnp.models import BSATNP
    from bsatnp.plot import plot_field

    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, dim_f=3,
                   likelihood="categorical")
    path = plot_field(model, tmp_path / "sir.png", task=SIRTask(side=12, n_frames=4, n_ctx=30,
                                                                min_ctx=5, max_ctx=29,
                                                                n_test=60), n_ctx=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="n_ctx"):
        SIRTask(side=12, n_ctx=30, min_ctx=5, max_ctx=29, n_test=60).field_batch(200, 0)


def test_infection_probability_is_beta_times_pressure_statistically():
    n, beta = 40_000, 0.3
    state = torch.zeros(n, 9, 9, dtype=torch.int8)
    state[:, 4, 4] = INFECTED
    state[:, 4, 6] = INFECTED  # two sources: pressure adds up
    out = run_sir(state, torch.full((n,), beta), torch.zeros(n), 2,
                  torch.Generator().manual_seed(0))[:, 1]
    assert ((out >= 0) & (out <= 2)).all()  # every cell in exactly one state
    # ν from each source within reach (offsets up to 4 in both axes): 1 / (Δi² + Δj²)
    pressure = {(4, 5): 1 + 1, (3, 4): 1 + 1 / 5, (0, 0): 1 / 32, (8, 8): 1 / 32 + 1 / 20,
                (0, 8): 1 / 32 + 1 / 20}
    for (i, j), nu in pressure.items():
        rate = (out[:, i, j] == INFECTED).double().mean().item()
        p = min(beta * nu, 1.0)
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (i, j, rate, p)
