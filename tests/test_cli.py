"""CLI and experiment plumbing: train → evaluate → plot → predict, configs, clean errors."""

from __future__ import annotations

import csv
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from bsatnp import cli, cli_args
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, load_experiment
from bsatnp.experiment_trainer import build_trainer
from bsatnp.geometry import DISTANCES, Distance
from bsatnp.io.checkpoint import load_checkpoint, load_model
from bsatnp.models import BSATNPConfig
from bsatnp.reports import TABLE_METRICS
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.kernels import KERNELS, KernelName
from bsatnp.train.config import TrainConfig

TINY_YAML = """\
model: {num_blocks: 1, dim: 16, qkv_dim: 16, ffn_dim: 32, embed_hidden: [32], head_hidden: [32]}
task: {batch_size: 2, n_ctx: 16, n_test: 24, min_ctx: 4, max_ctx: 15}
train: {steps: 6, batch_size: 2, lr: 1e-3, val_every: 3, val_batches: 2, save_every: 3,
        log_every: 2}
eval: {n_batches: {in_domain: 2, shifted: 2, scaled: 1}}
"""
TINY_TASK = GP2DTask(batch_size=2, n_ctx=16, n_test=24, min_ctx=4, max_ctx=15)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny experiment trained through the CLI: its directory (with last/best/log)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.yaml").write_text(TINY_YAML)
    out = root / "run"
    assert cli.main(["train", "--config", str(root / "tiny.yaml"), "--out", str(out),
                     "--quiet"]) == 0
    return out


def write_yaml(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- happy paths
def test_train_writes_checkpoints_and_log(run):
    assert {"last.safetensors", "best.safetensors", "log.jsonl"} <= {p.name for p in run.iterdir()}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6
    assert any("val_nll" in r for r in records)


def test_evaluate_writes_model_oracle_gap_per_domain(run, tmp_path, capsys):
    code = cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"),
                     "--out", str(tmp_path), "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert list(results["domains"]) == list(GP2DTask.domains)
    for domain, entry in results["domains"].items():
        assert {"model", "oracle", "gap"} <= set(entry)
        for part in ("model", "oracle", "gap"):
            assert set(TABLE_METRICS) <= set(entry[part])
            assert set(entry[part]["nll"]) == {"mean", "se"}
        expected = {"in_domain": 2, "shifted": 2, "scaled": 1}[domain]  # from the stored config
        assert entry["n_batches"] == expected
    assert results["domains"]["scaled"]["n_ctx"] == 64
    assert results["domains"]["scaled"]["model"]["nll"]["se"] is None  # one batch: no s.e.
    table = (tmp_path / "eval.md").read_text()
    assert table in capsys.readouterr().out
    assert "| shifted (2×2) | model |" in table and "± " in table


def test_evaluate_flags_override_the_stored_protocol(run, tmp_path):
    code = cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"), "--out",
                     str(tmp_path), "--n-batches", "3", "--seed", "7", "--domains", "shifted",
                     "--no-oracle", "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["seed"] == 7
    assert list(results["domains"]) == ["shifted"]
    entry = results["domains"]["shifted"]
    assert entry["n_batches"] == 3 and "oracle" not in entry and "gap" not in entry


def test_evaluate_cache_continues_an_interrupted_evaluation(run, tmp_path, capsys):
    def evaluate_cached(n):
        args = ["evaluate", "--checkpoint", str(run / "last.safetensors"), "--out",
                str(tmp_path), "--n-batches", str(n), "--domains", "in_domain", "--cache",
                str(tmp_path / "rows"), "--quiet"]
        assert cli.main(args) == 0
        return json.loads((tmp_path / "eval.json").read_text())["domains"]["in_domain"]

    assert evaluate_cached(1)["cached_batches"] == 0
    entry = evaluate_cached(2)
    assert entry["cached_batches"] == 1 and entry["n_batches"] == 2
    assert len((tmp_path / "rows" / "in_domain" / "model.jsonl").read_text().splitlines()) == 3
    (tmp_path / "rows" / "in_domain" / "model.jsonl").write_text("garbage\n")
    assert cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"), "--out",
                     str(tmp_path), "--n-batches", "1", "--domains", "in_domain", "--cache",
                     str(tmp_path / "rows"), "--quiet"]) == 2
    assert "not a bsatnp score cache" in capsys.readouterr().err


def test_evaluate_counts_per_domain(run, tmp_path, capsys):
    code = cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"), "--out",
                     str(tmp_path), "--n-batches", "in_domain=2,scaled=1", "--no-oracle",
                     "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert {d: e["n_batches"] for d, e in results["domains"].items()} == {
        "in_domain": 2, "scaled": 1}
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"),
                  "--n-batches", "in_domain=two"])
    assert "DOMAIN=COUNT" in capsys.readouterr().err
    assert cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"), "--out",
                     str(tmp_path), "--n-batches", "in_domain=1", "--domains", "scaled"]) == 2
    assert "no count for domain 'scaled'" in capsys.readouterr().err


def test_evaluate_with_training_free_baselines(run, tmp_path):
    code = cli.main(["evaluate", "--checkpoint", str(run / "last.safetensors"), "--out",
                     str(tmp_path), "--n-batches", "in_domain=2", "--baselines", "idw", "knn",
                     "--quiet"])
    assert code == 0
    entry = json.loads((tmp_path / "eval.json").read_text())["domains"]["in_domain"]
    assert {"model", "idw", "knn", "oracle", "gap/model", "gap/idw", "gap/knn"} <= set(entry)
    assert entry["idw"]["nll"]["mean"] != entry["knn"]["nll"]["mean"]
    assert "| gap/knn |" in (tmp_path / "eval.md").read_text()


def test_plot_field_and_learning_curve(run, tmp_path):
    field, curve = tmp_path / "field.png", tmp_path / "curve.png"
    assert cli.main(["plot", "--checkpoint", str(run / "best.safetensors"), "--out", str(field),
                     "--n-ctx", "20", "--quiet"]) == 0
    assert cli.main(["plot", "--log", str(run / "log.jsonl"), "--out", str(curve)]) == 0
    for path in (field, curve):
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_with_several_checkpoints_draws_comparison_panels(run, tmp_path, capsys):
    panels = tmp_path / "panels.png"
    best, last = str(run / "best.safetensors"), str(run / "last.safetensors")
    assert cli.main(["plot", "--checkpoint", best, last, "--label", "best", "last", "--out",
                     str(panels), "--n-ctx", "20", "--quiet"]) == 0
    assert panels.read_bytes()[:8] == PNG_MAGIC
    assert cli.main(["plot", "--checkpoint", best, last, "--label", "best", "--out",
                     str(panels), "--quiet"]) == 2
    assert "1 labels for 2 checkpoints" in capsys.readouterr().err


def test_comparison_panels_give_each_model_a_row_on_one_field(tmp_path):
    from bsatnp.models import BSATNP
    from bsatnp.models.tnpd import TNPD
    from bsatnp.plot import plot_comparison

    torch.manual_seed(0)
    models = {"bsatnp": BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32,
                               embed_hidden=(32,), head_hidden=(32,)),
              "tnpd": TNPD(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
                           head_hidden=(32,))}
    path = plot_comparison(models, tmp_path / "panels.png", n_ctx=20, grid_size=8)
    header = path.read_bytes()
    assert header[:8] == PNG_MAGIC
    width, height = (int.from_bytes(header[n:n + 4], "big") for n in (16, 20))
    # three panels a row (mean, std, |error|), a row for the truth and one per model
    assert (width, height) == (3 * 440, 3 * 440)
    with pytest.raises(ValueError, match="at least one model"):
        plot_comparison({}, tmp_path / "none.png")


def test_comparison_panels_share_one_colour_scale_per_column():
    import numpy as np

    from bsatnp.plot import shared_scales

    rows = [[("mean", np.array([0.0, 1.0]), "viridis", -2.0, 2.0),
             ("std", np.array([0.5, 0.9]), "magma", None, None)],
            [("mean", np.array([5.0]), "viridis", -2.0, 2.0),
             ("std", np.array([1.0, 1.2]), "magma", None, None)]]
    shared = shared_scales(rows)
    # fixed limits stay; free ones become the column's range over both rows
    assert [row[0][3:] for row in shared] == [(-2.0, 2.0), (-2.0, 2.0)]
    assert [row[1][3:] for row in shared] == [(0.5, 1.2), (0.5, 1.2)]
    assert rows[0][1][3] is None  # the input rows are left as they were


def test_learning_curves_of_several_runs_share_one_figure(run, tmp_path, capsys):
    log = str(run / "log.jsonl")
    curves = tmp_path / "curves.png"
    assert cli.main(["plot", "--log", log, log, "--label", "a", "b", "--out", str(curves)]) == 0
    assert curves.read_bytes()[:8] == PNG_MAGIC
    assert cli.main(["plot", "--log", log, log, "--label", "a", "--out", str(curves)]) == 2
    assert "1 labels for 2 logs" in capsys.readouterr().err


def test_predict_csv_and_npz(run, tmp_path):
    g = torch.Generator().manual_seed(0)
    s_ctx, s_test = torch.rand(10, 2, generator=g), torch.rand(5, 2, generator=g)
    f_ctx = torch.sin(3 * s_ctx.sum(-1))
    with open(tmp_path / "in.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["split", "s0", "s1", "f"])
        writer.writerows(["context", *s.tolist(), float(f)] for s, f in zip(s_ctx, f_ctx))
        writer.writerows(["test", *s.tolist(), ""] for s in s_test)
    ckpt = str(run / "last.safetensors")
    assert cli.main(["predict", "--checkpoint", ckpt, "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "out.csv")]) == 0
    with open(tmp_path / "out.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["s0", "s1", "mean", "std"] and len(rows) == 5
    np.savez(tmp_path / "in.npz", s_ctx=s_ctx.numpy(), f_ctx=f_ctx.numpy(),
             s_test=s_test.numpy())
    assert cli.main(["predict", "--checkpoint", ckpt, "--input", str(tmp_path / "in.npz"),
                     "--output", str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")
    assert out["mean"].shape == out["std"].shape == (5, 1) and (out["std"] > 0).all()
    csv_mean = np.array([[float(r["mean"])] for r in rows])
    np.testing.assert_allclose(csv_mean, out["mean"], rtol=1e-5, atol=1e-6)  # same prediction
    model = load_model(ckpt)
    expected = model.predict(_batch(s_ctx, f_ctx, s_test))[0][0].numpy()
    np.testing.assert_allclose(out["mean"], expected, rtol=1e-5, atol=1e-6)


def _batch(s_ctx, f_ctx, s_test):
    from bsatnp import Batch

    return Batch(s_ctx=s_ctx[None], f_ctx=f_ctx[None, :, None], s_test=s_test[None])


def test_train_resume_continues_to_the_requested_step(run, tmp_path):
    config = str(run.parent / "tiny.yaml")
    out = tmp_path / "resumed"
    assert cli.main(["train", "--config", config, "--out", str(out), "--steps", "3",
                     "--quiet"]) == 0
    assert cli.main(["train", "--config", config, "--resume", str(out / "last.safetensors"),
                     "--quiet"]) == 0
    resumed = load_model(out / "last.safetensors")
    full = load_model(run / "last.safetensors")
    for a, b in zip(resumed.state_dict().values(), full.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # exact resume: same as one run


def test_train_init_starts_a_fresh_run_from_trained_weights(run, tmp_path, capsys):
    config = load_experiment(run.parent / "tiny.yaml")
    trainer = build_trainer(config, out_dir=tmp_path / "warm", init=run / "last.safetensors")
    trained = load_model(run / "last.safetensors")
    assert trainer.step == 0  # a new optimiser and schedule ...
    for a, b in zip(trainer.model.state_dict().values(), trained.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # ... from the trained weights
    assert cli.main(["train", "--config", str(run.parent / "tiny.yaml"), "--out",
                     str(tmp_path / "cli"), "--init", str(run / "last.safetensors"),
                     "--steps", "2", "--quiet"]) == 0
    warm = load_checkpoint(tmp_path / "cli" / "last.safetensors")
    assert warm.step == 2 and warm.extra["init"] == str(run / "last.safetensors")
    assert cli.main(["train", "--config", str(run.parent / "tiny.yaml"), "--resume",
                     str(tmp_path / "cli" / "last.safetensors"), "--steps", "3", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "cli" / "last.safetensors").extra["init"] == warm.extra[
        "init"]  # provenance survives a resume
    other = write_yaml(tmp_path, TINY_YAML.replace("dim: 16,", "dim: 8,"))
    assert cli.main(["train", "--config", str(other), "--out", str(tmp_path / "bad"),
                     "--init", str(run / "last.safetensors"), "--quiet"]) == 2
    assert "init needs the same architecture" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        build_trainer(config, resume=run / "last.safetensors", init=run / "last.safetensors")


def test_init_carries_a_gaussian_model_into_a_count_model(run, tmp_path):
    """Only the likelihood differs: every weight of the same shape is copied; the token
    embedding's first layer gains the log-exposure column and keeps the rest."""
    counts = TINY_YAML.replace("head_hidden: [32]}", "head_hidden: [32], "
                               "likelihood: negative_binomial}").replace(
        "task: {", "task: {name: latent_gp, likelihood: negative_binomial, "
        "exposure: [0.5, 2.0], ")
    config = load_experiment(write_yaml(tmp_path, counts))
    trainer = build_trainer(config, out_dir=tmp_path / "counts", init=run / "last.safetensors")
    trained, own = load_model(run / "last.safetensors").state_dict(), trainer.model.state_dict()
    widened = [name for name in own if own[name].shape != trained[name].shape]
    assert widened == ["embed.mlp.layers.0.weight"]
    for name, weight in trained.items():
        shared = tuple(slice(0, n) for n in weight.shape)
        torch.testing.assert_close(own[name][shared], weight[shared], rtol=0, atol=0)
    assert trainer.step == 0


def test_demo_runs_end_to_end_on_a_tiny_config(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_args, "DEMO_CONFIG", str(run.parent / "tiny.yaml"))
    assert cli.main(["demo", "--out", str(tmp_path), "--minutes", "0", "--quiet"]) == 0
    for name in ("eval.json", "eval.md", "field.png", "learning_curve.png",
                 "run/last.safetensors"):
        assert (tmp_path / name).is_file(), name
    out = capsys.readouterr().out
    assert "Trained 1 steps" in out and str(tmp_path / "field.png") in out


def test_demo_runs_any_task_and_skips_the_map_where_there_is_none(tmp_path, capsys):
    config = write_yaml(tmp_path, (
        "model: {num_blocks: 1, dim: 16, qkv_dim: 16, ffn_dim: 32, min_std: 0.05}\n"
        "task: {name: fixed_effects, batch_size: 2, n_ctx: 12, n_test: 8, min_ctx: 3, "
        "max_ctx: 11, dim_x: 3}\n"
        "train: {steps: 2, batch_size: 2, val_every: 2, val_batches: 1}\n"
        "eval: {n_batches: 2}\n"))
    out = tmp_path / "demo"
    assert cli.main(["demo", "--config", str(config), "--out", str(out), "--minutes", "0",
                     "--quiet"]) == 0
    assert (out / "eval.md").is_file() and not (out / "field.png").exists()
    assert "fixed_effects task" in capsys.readouterr().out


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train: {stepz: 5}\n", "train: unknown key(s) ['stepz']"),
        ("train: {lr: fast}\n", "train.lr: expected float, got 'fast'"),
        ("model: {embed_hidden: [32, x]}\n", "model.embed_hidden[1]: expected int"),
        ("task: {lengthscale_prior: {weibull: [1, 2]}}\n", "task.lengthscale_prior: unknown prior"),
        ("task: {min_ctx: 9, max_ctx: 4}\n", "task: need 1 <= min_ctx"),
        ("eval: {domains: [moon]}\n", "eval.domains must be distinct names"),
        ("optim: {}\n", "unknown section(s) ['optim']"),
        ("train: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(tmp_path, capsys, text, needle):
    path = write_yaml(tmp_path, text)
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_missing_checkpoint_exits_2(tmp_path, capsys, command):
    assert cli.main([command, "--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_corrupt_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    assert cli.main(["evaluate", "--checkpoint", str(bad), "--quiet"]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_missing_config_and_bad_predict_input_exit_2(run, tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "in.csv"
    bad.write_text("split,s0,f\ncontext,0.1,1.0\ntest,0.2,\n")
    assert cli.main(["predict", "--checkpoint", str(run / "last.safetensors"), "--input",
                     str(bad), "--output", str(tmp_path / "out.csv")]) == 2
    assert "missing column(s) ['s1']" in capsys.readouterr().err


# ------------------------------------------------------------------- library level
def test_gap_is_model_minus_oracle():
    torch.manual_seed(0)
    model = ExperimentConfig.from_dict({"model": {"num_blocks": 1, "dim": 16, "qkv_dim": 16,
                                                  "ffn_dim": 32}}).build_model()
    results = evaluate(model, ("in_domain", "scaled"), 3, seed=5, progress=False,
                       task=TINY_TASK)
    for entry in results["domains"].values():
        for metric, gap in entry["gap"].items():
            want = entry["model"][metric]["mean"] - entry["oracle"][metric]["mean"]
            assert gap["mean"] == pytest.approx(want, abs=1e-12)
        assert entry["oracle"]["nll"]["mean"] < entry["model"]["nll"]["mean"]


def test_derived_domains_match_the_paper_domains():
    def scaled(**overrides):  # [−4, 4]², 2048 slots (492–2047 valid, PROTOCOLS §1), 4096 test
        return GP2DTask(**{"box": (-4.0, 4.0), "n_ctx": 2048, "n_test": 4096, "min_ctx": 492,
                           "max_ctx": 2047, **overrides})

    in_domain = GP2DTask()  # [−2, 2]², 512 context slots (128–511 valid), 1024 test
    assert in_domain.domain("in_domain") == in_domain
    assert in_domain.domain("shifted") == GP2DTask(box=(8.0, 12.0))
    assert in_domain.domain("scaled") == scaled(targets="conditional", min_ctx=512)
    paper = load_experiment("gp2d").task
    assert paper.domain("scaled") == scaled(targets="conditional", scaled_min_ctx=492)
    with pytest.raises(ValueError, match="has no domain 'moon'"):
        in_domain.domain("moon")


def test_bundled_configs_are_the_paper_setup():
    paper = load_experiment("gp2d")
    assert paper.model == BSATNPConfig() and paper.task == GP2DTask(scaled_min_ctx=492)
    assert paper.train == TrainConfig(out_dir="runs/gp2d")
    quick = load_experiment("configs/gp2d_quick.yaml")
    assert quick.model == paper.model and quick.task == paper.task
    assert 100 <= quick.train.steps <= 1000
    assert ExperimentConfig.from_dict(quick.to_dict()) == quick  # round trip


ROOT = Path(__file__).resolve().parents[1]
YAML_CONFIGS = sorted([*(ROOT / "src/bsatnp/configs").glob("*.yaml"),
                       *(ROOT / "configs").glob("*.yaml")])


@pytest.mark.parametrize("path", YAML_CONFIGS, ids=[p.relative_to(ROOT).as_posix()
                                                    for p in YAML_CONFIGS])
def test_every_yaml_config_parses(path):
    config = load_experiment(path)
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("section", "key", "choices"), [
    ({"model": {"backend": "quantum"}}, "model.backend", "('auto', 'dense', 'tiled', 'flex')"),
    ({"model": {"use_s": "sideways"}}, "model.use_s", "('embed', 'bias', 'both')"),
    ({"model": {"likelihood": "weibull"}}, "model.likelihood",
     "('gaussian', 'student_t', 'gaussian_mixture', 'poisson', 'negative_binomial', 'zip', "
     "'zinb', 'bernoulli', 'binomial', 'beta', 'categorical')"),
    ({"model": {"bias_s": {"distance": "manhattan"}}}, "model.bias_s.distance",
     "('euclidean', 'great_circle', 'great_circle_degrees', 'abs')"),
    ({"model": {"family": "tnpd", "norm": "middle"}}, "model.norm", "('post', 'pre')"),
    ({"task": {"targets": "marginal"}}, "task.targets", "('joint', 'conditional')"),
    ({"task": {"kernel": "nope"}}, "task.kernel", "('rbf', 'matern12', "),
])
def test_a_value_outside_a_literal_field_is_refused_naming_the_field_and_choices(
        section, key, choices):
    with pytest.raises(ValueError) as caught:
        ExperimentConfig.from_dict(section, source="cfg.yaml")
    message = str(caught.value)
    assert message.startswith(f"cfg.yaml: {key}: expected one of {choices}"), message


def test_literal_fields_are_checked_on_direct_construction_too():
    with pytest.raises(ValueError, match=r"BSATNPConfig.use_s must be one of \('embed', "):
        BSATNPConfig(use_s="sideways")
    with pytest.raises(ValueError, match=r"GP2DTask.targets must be one of"):
        GP2DTask(targets=1)
    assert BSATNPConfig.from_dict({"use_s": "embed"}).use_s == "embed"


def test_literal_names_match_their_registries():
    assert typing.get_args(Distance) == tuple(DISTANCES)
    assert typing.get_args(KernelName) == tuple(KERNELS)


def test_seeds_must_keep_train_validation_and_test_apart():
    with pytest.raises(ValueError, match="train.seed"):
        ExperimentConfig.from_dict({"train": {"seed": 1000}})
    with pytest.raises(ValueError, match="val_seed must differ"):
        ExperimentConfig.from_dict({"eval": {"seed": 3, "val_seed": 3}})


@pytest.mark.parametrize("model", [
    "{family: tnpd, num_blocks: 1, dim: 16, qkv_dim: 16, ffn_dim: 32, embed_hidden: [32], "
    "head_hidden: [32]}",
    "{family: tetnp, num_layers: 1, dim: 16, qkv_dim: 16, ffn_dim: 32, num_pseudo: 4}",
    "{family: convcnp, channels: 8, depth: 2, points_per_unit: 4}",
])
def test_baseline_families_train_evaluate_and_predict_through_the_cli(model, tmp_path):
    config = write_yaml(tmp_path, TINY_YAML.replace(TINY_YAML.splitlines()[0], f"model: {model}"))
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    ckpt = out / "last.safetensors"
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--domains", "in_domain",
                     "--out", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert np.isfinite(results["domains"]["in_domain"]["model"]["nll"]["mean"])
    points = tmp_path / "points.csv"
    points.write_text("split,s0,s1,f\ncontext,0.1,-0.5,0.8\ncontext,0.4,0.2,-0.3\ntest,0,0,\n")
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--input", str(points),
                     "--output", str(tmp_path / "pred.csv"), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "pred.csv").open()))
    assert len(rows) == 1 and float(rows[0]["std"]) > 0
