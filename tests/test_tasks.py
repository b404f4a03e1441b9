"""The task layer: registry, samplers, the paper's spatial tasks, rotations, oracles, plug-ins."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bsatnp import Batch, cli, cli_args
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, load_experiment
from bsatnp.experiment_trainer import build_trainer
from bsatnp.models import BSATNP
from bsatnp.tasks import IN_DOMAIN, Task, batch_generator, register_task, task_class, task_names
from bsatnp.tasks.fixed_effects import FixedEffectsTask
from bsatnp.tasks.geodesic import GeodesicTask, rotate_lonlat, rotation_matrix
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.kernels import great_circle_degrees, matern12_great_circle
from bsatnp.tasks.multiscale import MultiscaleTask
from bsatnp.tasks.oracle import GPParams, gp_posterior
from bsatnp.tasks.priors import Gamma, InvGamma, prior_from_config
from bsatnp.tasks.registry import TASKS
from bsatnp.tasks.samplers import (
    context_test_indices,
    frame_context,
    row_windows,
    split_context_test,
    time_window,
)

SMALL = {"batch_size": 3, "n_ctx": 24, "n_test": 20, "min_ctx": 5, "max_ctx": 23}
SMALL_TASKS = {
    "gp2d": GP2DTask(**SMALL),
    "multiscale": MultiscaleTask(**SMALL),
    "geodesic": GeodesicTask(**SMALL),
    "fixed_effects": FixedEffectsTask(**SMALL, dim_x=3),
}
TINY_MODEL = {"num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 32, "embed_hidden": [32],
              "head_hidden": [32]}


# -------------------------------------------------------------------------- registry
def test_registry_lists_the_paper_tasks_and_the_cli_names_them(capsys):
    assert {"gp2d", "multiscale", "geodesic", "fixed_effects"} <= set(task_names())
    assert task_class("geodesic") is GeodesicTask
    with pytest.raises(ValueError, match="registered tasks"):
        task_class("moon")
    assert cli.main(["tasks"]) == 0
    listing = capsys.readouterr().out
    assert "rotated_60_30_20" in listing and "fixed_effects" in listing
    help_text = cli_args.build_parser().format_help()
    assert all(name in help_text for name in task_names())


def test_register_task_refuses_a_taken_name_and_non_tasks():
    @dataclass(frozen=True)
    class Impostor(GP2DTask):
        name = "gp2d"

    with pytest.raises(ValueError, match="taken"):
        register_task(Impostor)
    with pytest.raises(ValueError, match="does not implement"):
        register_task(dict)  # type: ignore[arg-type]
    assert TASKS["gp2d"] is GP2DTask


# -------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("shared", [False, True])
def test_split_counts_in_range_masks_prefix_and_permutations(shared):
    g = torch.Generator().manual_seed(0)
    perm, mask = split_context_test(64, 30, 12, 3, 11, g, shared_permutation=shared)
    assert perm.shape == (64, 30) and mask.shape == (64, 12)
    assert torch.equal(perm.sort(1).values, torch.arange(30).expand(64, 30))
    counts = mask.sum(1)
    assert counts.min() == 3 and counts.max() == 11  # 64 draws cover U{3..11}
    assert torch.equal(mask, torch.arange(12)[None] < counts[:, None])
    assert (perm == perm[:1]).all() == shared


@pytest.mark.parametrize("includes", [False, True])
def test_context_and_test_indices_disjoint_or_containing_the_context(includes):
    g = torch.Generator().manual_seed(1)
    ctx, mask, test = context_test_indices(16, 40, 10, 20, 2, 9, g, test_includes_context=includes)
    assert ctx.shape == mask.shape == (16, 10) and test.shape == (16, 20)
    for c, t in zip(ctx.tolist(), test.tolist(), strict=True):
        overlap = set(c) & set(t)
        assert overlap == (set(c) if includes else set())  # every context slot, or none
        assert len(set(t)) == 20
    with pytest.raises(ValueError, match="exceeds"):
        context_test_indices(2, 20, 10, 11, 1, 9, g)


@pytest.mark.parametrize("target", ["last", "middle"])
def test_time_windows_are_contiguous_and_cover_every_start(target):
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        steps, where = time_window(12, 5, g, target)
        assert torch.equal(steps, torch.arange(steps[0], steps[0] + 5))  # contiguous
        assert 0 <= steps[0] and steps[-1] <= 11
        assert where == (4 if target == "last" else 2)
        starts.add(int(steps[0]))
    assert starts == set(range(8))
    with pytest.raises(ValueError):
        time_window(4, 5, g)


@pytest.mark.parametrize("shared", [False, True])
def test_frame_context_draws_each_frame_independently(shared):
    g = torch.Generator().manual_seed(0)
    index, mask = frame_context(4, 3, 256, 16, 8, 15, g, shared=shared)
    assert index.shape == mask.shape == (4, 3, 16)
    counts = mask.sum(-1)
    assert ((counts >= 8) & (counts <= 15)).all()
    assert torch.equal(mask, torch.arange(16) < counts[..., None])  # valid slots first
    for row in index.reshape(-1, 16).tolist():
        assert len(set(row)) == 16 and max(row) < 256  # distinct locations per frame
    assert not torch.equal(index[0, 0], index[0, 1])  # frames differ
    assert bool((index == index[:1]).all()) == shared  # tasks share them only if asked


def test_row_windows_are_contiguous_and_distinct():
    g = torch.Generator().manual_seed(0)
    rows = row_windows(100, 708 // 12, 32, g)
    assert rows.shape == (32, 59)
    assert torch.equal(rows - rows[:, :1], torch.arange(59).expand(32, 59))
    assert len(set(rows[:, 0].tolist())) == 32 and rows.max() < 100
    with pytest.raises(ValueError, match="cannot draw"):
        row_windows(40, 30, 20, g)


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_every_task_draws_valid_reproducible_batches(name):
    task = SMALL_TASKS[name]
    batch = task.sample(torch.Generator().manual_seed(1))
    dims = task.model_defaults()
    roles = tuple(r for r in ("x", "s", "t") if dims[f"dim_{r}"] > 0)
    batch.validate(required_roles=roles, need_f_test=True)
    assert batch.f_ctx.shape == (3, 24, 1) and batch.f_test.shape == (3, 20, 1)
    counts = batch.context_mask().sum(1)
    assert ((counts >= 5) & (counts <= 23)).all()
    again = task.sample(torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(_tensors(batch), _tensors(again), strict=True))
    with_oracle, oracle = task.sample_with_oracle(torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in
               zip(_tensors(batch), _tensors(with_oracle), strict=True))
    assert oracle.mean.shape == batch.f_test.shape and (oracle.stddev > 0).all()
    for domain in task.domains:  # every domain draws
        task.domain(domain).sample(torch.Generator().manual_seed(2))
    assert task.domain(IN_DOMAIN) is task


def test_padding_is_never_read_by_the_oracle_of_any_task():
    for task in SMALL_TASKS.values():
        batch, oracle = task.sample_with_oracle(torch.Generator().manual_seed(3))
        keep = batch.context_mask()[..., None]
        garbage = batch.map(**{f"{r}_ctx": torch.where(keep, batch.ctx(r), torch.nan)
                               for r in ("x", "s", "f") if batch.ctx(r) is not None})
        params = task.draw(torch.Generator().manual_seed(3))[1]
        assert torch.equal(gp_posterior(garbage, params).mean, oracle.mean)


def test_multiscale_points_half_fine_half_coarse():
    task = MultiscaleTask()
    locs = task.locations(torch.Generator().manual_seed(0))[0]
    assert locs.shape == (256, 2)
    assert locs[:128].abs().max() <= 0.5 and locs[128:].abs().max() <= 1.5
    assert locs[128:].abs().max() > 0.5
    batch = task.sample(torch.Generator().manual_seed(0))
    assert batch.s_ctx.shape == (32, 128, 2) and batch.s_test.shape == (32, 128, 2)
    counts = batch.context_mask().sum(1)
    assert counts.min() >= 64 and counts.max() <= 127


def test_fixed_effects_batch_shares_x_and_beta_and_adds_noise_everywhere():
    task = FixedEffectsTask()
    batch, params = task.draw(torch.Generator().manual_seed(0))
    assert batch.x_ctx.shape == (32, 64, 10) and batch.x_test.shape == (32, 64, 10)
    assert params.x_var == 1.0 and params.test_noise and params.noise.shape == (32,)
    assert (params.noise >= 0).all() and params.noise.mean() < 0.2
    # x belongs to a location: the same location carries the same covariates in every task.
    s = torch.cat([batch.s_ctx, batch.s_test], 1)
    x = torch.cat([batch.x_ctx, batch.x_test], 1)
    order = (s[..., 0] * 1e3 + s[..., 1]).argsort(1)
    sorted_x = x.gather(1, order[..., None].expand_as(x))
    assert torch.equal(sorted_x, sorted_x[:1].expand_as(sorted_x))


# --------------------------------------------------------------- kernels and priors
def test_great_circle_kernel_closed_form_and_positive_definite():
    on_equator = torch.tensor([[[0.0, 0.0], [7.0, 0.0], [0.0, 5.0]]])
    d = great_circle_degrees(on_equator, on_equator)[0]
    assert d[0, 1].item() == pytest.approx(7.0, rel=1e-6)  # along the equator: Δlon
    assert d[0, 2].item() == pytest.approx(5.0, rel=1e-6)  # along a meridian: Δlat
    k = matern12_great_circle(on_equator, on_equator, 2.0, 15.0)[0]
    assert k[0, 1].item() == pytest.approx(2.0 * math.exp(-7.0 / 15.0), rel=1e-6)
    points = GeodesicTask(n_ctx=100, n_test=100, min_ctx=1, max_ctx=100).locations(
        torch.Generator().manual_seed(0)).double()
    cov = matern12_great_circle(points, points, 1.0, 15.0)[0]
    assert torch.linalg.eigvalsh(cov).min() > -1e-9


def test_gamma_and_inverse_gamma_priors_moments():
    g = torch.Generator().manual_seed(0)
    gamma = Gamma(3.0, 2.0).sample(200_000, g)
    assert gamma.mean().item() == pytest.approx(1.5, rel=0.01)
    assert gamma.var().item() == pytest.approx(0.75, rel=0.03)
    inv = InvGamma(3.0, 30.0).sample(200_000, g)
    assert inv.mean().item() == pytest.approx(15.0, rel=0.02)  # b / (a − 1)
    assert prior_from_config({"invgamma": [3, 30]}) == InvGamma(3.0, 30.0)


# ------------------------------------------------------------------------ rotation
@pytest.mark.parametrize("angles", [(60.0, 30.0, 0.0), (60.0, 30.0, 20.0), (-15.0, 80.0, 45.0)])
def test_rotation_is_orthogonal_and_is_scipys_extrinsic_yzx(angles):
    north, east, tilt = angles
    r = rotation_matrix(north, east, tilt)
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.linalg.det(r).item() == pytest.approx(1.0)
    reference = Rotation.from_euler("yzx", [-north, east, tilt], degrees=True).as_matrix()
    np.testing.assert_allclose(r.numpy(), reference, atol=1e-12)


def test_known_points_land_where_the_convention_puts_them():
    origin = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(rotate_lonlat(origin, 90.0, 0.0, 0.0)[0, 1],
                          torch.tensor(90.0, dtype=torch.float64))  # north by 90: the pole
    assert torch.allclose(rotate_lonlat(origin, 0.0, 30.0, 0.0),
                          torch.tensor([[30.0, 0.0]], dtype=torch.float64))  # east by 30
    assert torch.allclose(rotate_lonlat(origin, 60.0, 0.0, 0.0),
                          torch.tensor([[0.0, 60.0]], dtype=torch.float64), atol=1e-12)
    points = torch.tensor([[3.0, -4.0], [-9.0, 8.5]], dtype=torch.float64)
    moved = rotate_lonlat(points, 60.0, 30.0, 20.0)
    d_before = great_circle_degrees(points[None], points[None])[0, 0, 1]
    d_after = great_circle_degrees(moved[None], moved[None])[0, 0, 1]
    assert d_after.item() == pytest.approx(d_before.item(), rel=1e-9)  # an isometry


def test_rotated_domains_change_what_models_see_not_the_process():
    task = GeodesicTask(**SMALL)
    plain, plain_oracle = task.sample_with_oracle(torch.Generator().manual_seed(4))
    turned, turned_oracle = task.domain("rotated_60_30_20").sample_with_oracle(
        torch.Generator().manual_seed(4))
    assert not torch.allclose(plain.s_ctx, turned.s_ctx)
    assert torch.allclose(plain.f_test, turned.f_test, atol=1e-4)  # same draw, same values
    assert torch.allclose(plain_oracle.mean, turned_oracle.mean, atol=1e-4)
    torch.manual_seed(0)
    geo = BSATNP(**TINY_MODEL, bias_s={"role": "s", "distance": "great_circle_degrees"})
    torch.manual_seed(0)
    flat = BSATNP(**TINY_MODEL)
    assert torch.allclose(geo.predict(plain)[0], geo.predict(turned)[0], atol=1e-4)
    assert not torch.allclose(flat.predict(plain)[0], flat.predict(turned)[0], atol=1e-3)


# -------------------------------------------------------------------------- oracles
def test_fixed_effects_oracle_matches_a_hand_computed_posterior():
    rng = np.random.default_rng(0)
    s_c, s_t = rng.uniform(-1, 1, (4, 2)), rng.uniform(-1, 1, (3, 2))
    x_c, x_t = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    f_c = rng.normal(size=4)
    var, ls, noise = 1.3, 0.6, 0.2

    def k(a, b, xa, xb):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return var * np.exp(-0.5 * d2 / ls**2) + xa @ xb.T  # β ~ N(0, I) integrated out

    k_cc = k(s_c, s_c, x_c, x_c) + (noise**2 + 1e-5) * np.eye(4)
    k_tc = k(s_t, s_c, x_t, x_c)
    mean = k_tc @ np.linalg.solve(k_cc, f_c)
    prior = var + 1e-5 + (x_t**2).sum(1) + noise**2  # noisy test targets
    std = np.sqrt(prior - np.einsum("ij,ji->i", k_tc, np.linalg.solve(k_cc, k_tc.T)))
    as_t = {name: torch.tensor(v, dtype=torch.float32)[None] for name, v in
            (("s_ctx", s_c), ("s_test", s_t), ("x_ctx", x_c), ("x_test", x_t))}
    batch = Batch(f_ctx=torch.tensor(f_c, dtype=torch.float32)[None, :, None], **as_t)
    params = GPParams(kernel="rbf", var=torch.tensor([var], dtype=torch.float64),
                      lengthscale=torch.tensor([ls], dtype=torch.float64),
                      noise=torch.tensor([noise], dtype=torch.float64), x_var=1.0,
                      test_noise=True)
    pred = gp_posterior(batch, params)
    np.testing.assert_allclose(pred.mean[0, :, 0].numpy(), mean, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(pred.stddev[0, :, 0].numpy(), std, rtol=2e-5)


@pytest.mark.parametrize("name", ["multiscale", "geodesic", "fixed_effects"])
def test_each_oracle_is_calibrated_on_its_own_task(name):
    task = SMALL_TASKS[name]
    z = []
    for i in range(40):
        batch, oracle = task.sample_with_oracle(batch_generator(9, i))
        z.append(((batch.f_test - oracle.mean) / oracle.stddev).flatten())
    z = torch.cat(z)  # 2400 standardised residuals: N(0, 1) if the oracle is exact
    assert abs(z.mean().item()) < 0.15 and z.std().item() == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------ a plug-in task
@dataclass(frozen=True)
class SineTask(Task):
    """Toy 1-D task for the plug-in test: f = sin(s + phase), phase per task."""

    name = "toy_sine"
    batch_size: int = 4
    n_ctx: int = 10
    n_test: int = 12

    def sample(self, generator=None, split="train"):
        n = self.n_ctx + self.n_test
        s = 6 * torch.rand(self.batch_size, n, 1, generator=generator) - 3
        phase = 3 * torch.rand(self.batch_size, 1, 1, generator=generator)
        f = torch.sin(s + phase)
        return Batch(s_ctx=s[:, :self.n_ctx], f_ctx=f[:, :self.n_ctx],
                     s_test=s[:, self.n_ctx:], f_test=f[:, self.n_ctx:])

    def model_defaults(self) -> dict[str, Any]:
        return {"dim_x": 0, "dim_s": 1, "dim_t": 0, "dim_f": 1, "likelihood": "gaussian"}


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "toy_sine", SineTask)
    return SineTask


def test_a_registered_toy_task_trains_and_evaluates_end_to_end(toy_task, tmp_path, capsys):
    config = ExperimentConfig.from_dict({
        "task": {"name": "toy_sine", "batch_size": 2},
        "model": TINY_MODEL,
        "train": {"steps": 4, "batch_size": 3, "val_every": 2, "val_batches": 2,
                  "save_every": 2, "out_dir": str(tmp_path / "run")},
        "eval": {"n_batches": 3},
    })
    assert config.model.dim_s == 1 and config.task == SineTask(batch_size=2)
    assert ExperimentConfig.from_dict(config.to_dict()) == config  # stored and read back
    trainer = build_trainer(config)
    trainer.fit(progress=False)
    assert trainer.step == 4
    results = evaluate(trainer.model, n_batches=3, task=config.task, progress=False)
    entry = results["domains"]["in_domain"]
    assert results["task"] == "toy_sine" and "oracle" not in entry
    assert entry["n_batches"] == 3 and math.isfinite(entry["model"]["nll"]["mean"])
    # The same through the CLI, from a YAML file.
    yaml_path = tmp_path / "toy.yaml"
    yaml_path.write_text("task: {name: toy_sine}\nmodel: {num_blocks: 1, dim: 16, qkv_dim: 16, "
                         "ffn_dim: 32}\ntrain: {steps: 2, val_every: 2, val_batches: 1}\n"
                         "eval: {n_batches: 2}\n")
    out = tmp_path / "cli"
    assert cli.main(["train", "--config", str(yaml_path), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(out / "last.safetensors"), "--quiet"]) == 0
    assert "toy_sine" in (out / "eval.md").read_text()


@pytest.mark.parametrize("config", ["multiscale", "multiscale_tetnp", "geodesic",
                                    "geodesic_euclidean", "geodesic_satnp", "fixed_effects"])
def test_bundled_task_configs_build_the_paper_models(config):
    experiment = load_experiment(config)
    model = experiment.build_model()
    task = replace(experiment.task, **{**SMALL, "batch_size": 2})
    with torch.no_grad():
        dist = model(task.sample(torch.Generator().manual_seed(0)))
    assert dist.mean.shape == (2, 20, 1)
    assert experiment.eval.domains_of(experiment.task) == experiment.task.domains
    if config == "geodesic":
        assert experiment.model.bias_s.distance == "great_circle_degrees"
    if config == "fixed_effects":
        assert experiment.model.dim_x == 10 and experiment.model.use_x == "embed"


def _tensors(batch: Batch) -> list[torch.Tensor]:
    return [getattr(batch, n) for n in ("x_ctx", "s_ctx", "f_ctx", "mask_ctx", "x_test",
                                        "s_test", "f_test") if getattr(batch, n) is not None]


def test_imports_run_downhill():
    """tasks/ and train/ never import the model zoo or baselines; the tasks load without it."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "bsatnp"
    for folder in ("tasks", "train"):
        for path in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad = [n for n in names if n.startswith(("bsatnp.models", "bsatnp.baselines"))]
                assert not bad, f"{path.name} imports {bad}"
    code = ("import sys, bsatnp.tasks; "
            "print(sorted(m for m in sys.modules if m.startswith(('bsatnp.models', "
            "'bsatnp.baselines'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
