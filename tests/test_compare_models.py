"""The model-comparison benchmark runs end to end in its quick mode (small models, tasks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_compare_models_quick_mode(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    models = results["models"]
    assert {"bsatnp", "bsatnp embed", "tnpd", "tetnp", "convcnp", "idw", "knn"} <= set(models)
    paper = {"tetnp paper", "tetnp paper32", "tetnp vanilla", "convcnp paper"}
    assert paper <= set(models)  # the paper's baselines (issue 33), at quick widths here
    assert "tnpd all-keys dense" in results["costs"]  # timed, not trained or evaluated
    assert models["idw"]["parameters"] == 0 < models["bsatnp"]["parameters"]
    for name, cost in results["costs"].items():
        assert cost["step_s"] > 0 and cost["gflops"] > 0, name
    domains = results["eval"]["domains"]
    assert set(domains) == {"in_domain", "shifted", "scaled"}
    scored = [name for name in models if name != "tnpd all-keys dense"]
    for entry in domains.values():
        for name in (*scored, "oracle"):
            assert math.isfinite(entry[name]["nll"]["mean"]), name
    nll = {d: {m: domains[d][m]["nll"]["mean"] for m in scored} for d in domains}
    # The shifted batches are the in-domain ones moved by +10: invariant models score the same.
    for name in ("bsatnp", "tetnp", "convcnp", "idw", *sorted(paper)):
        assert abs(nll["shifted"][name] - nll["in_domain"][name]) < 1e-3, name
    assert abs(nll["shifted"]["tnpd"] - nll["in_domain"]["tnpd"]) > 1e-3
    assert "| oracle |" in proc.stdout


def test_compare_models_continues_in_pieces(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "compare.json"

    def compare(*extra):
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick",
             "--models", "bsatnp,tnpd,idw", "--threads", "1", "--runs", str(runs), "--out",
             str(out), *extra],
            capture_output=True, text=True, timeout=600,
        )

    proc = compare("--minutes", "0")  # no time: nothing trains, no table yet
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Not yet at their steps: bsatnp, tnpd" in proc.stdout and not out.exists()
    assert compare().returncode == 0
    first = json.loads(out.read_text())
    assert all((runs / "scores" / "in_domain" / f"{name}.jsonl").exists()
               for name in ("bsatnp", "tnpd", "idw", "oracle"))
    again = compare()  # every run is finished and every batch scored: both are reused
    assert again.returncode == 0 and "bsatnp: step 4 of 4 (0 steps" in again.stdout
    assert json.loads(out.read_text())["eval"]["domains"] == {
        domain: {**entry, "seconds": entry_again["seconds"],
                 "cached_batches": entry_again["cached_batches"]}
        for (domain, entry), entry_again in zip(
            first["eval"]["domains"].items(),
            json.loads(out.read_text())["eval"]["domains"].values(), strict=True)
    }
    assert json.loads(out.read_text())["eval"]["domains"]["scaled"]["cached_batches"] == 1


def test_compare_models_seeds_report_mean_sd_and_paired_tests(tmp_path):
    """--seeds: one run directory per seed, every seed scored on the same batches, the
    summary's mean ± s.d. over seeds and paired tests consistent with the per-seed scores;
    a rerun resumes every run."""
    from bsatnp.io.checkpoint import load_checkpoint

    runs, out = tmp_path / "runs", tmp_path / "seeds.json"

    def compare():
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick",
             "--models", "bsatnp,tnpd,idw", "--seeds", "3,4", "--threads", "1", "--runs",
             str(runs), "--out", str(out)],
            capture_output=True, text=True, timeout=600,
        )

    proc = compare()
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["meta"]["seeds"] == [3, 4] and set(results["models"]) == {
        "bsatnp", "tnpd", "idw"}
    for seed in (3, 4):
        for name in ("bsatnp", "tnpd"):
            ckpt = load_checkpoint(runs / f"seed{seed}" / name / "last.safetensors")
            assert (ckpt.step, ckpt.train_config["seed"]) == (4, seed)
    summary = results["summary"]
    assert summary["reference"] == "bsatnp" and summary["metrics"] == ["nll", "rmse"]
    for domain, entry in results["eval"]["domains"].items():
        nll = {name: entry[name]["nll"]["mean"] for name in
               ("bsatnp seed=3", "bsatnp seed=4", "tnpd seed=3", "tnpd seed=4", "idw")}
        assert nll["bsatnp seed=3"] != nll["bsatnp seed=4"]  # the seeds train other models
        rows = summary["domains"][domain]["models"]
        assert rows["bsatnp"]["seeds"] == 2 and rows["idw"]["seeds"] == 1
        assert rows["bsatnp"]["nll"]["mean"] == pytest.approx(
            (nll["bsatnp seed=3"] + nll["bsatnp seed=4"]) / 2)
        assert rows["bsatnp"]["nll"]["sd"] == pytest.approx(
            abs(nll["bsatnp seed=3"] - nll["bsatnp seed=4"]) / math.sqrt(2))
        paired = summary["domains"][domain]["paired"]
        assert set(paired) == {"tnpd", "idw"}
        assert paired["tnpd"]["nll"]["n"] == entry["n_batches"]
        assert paired["tnpd"]["nll"]["mean_diff"] == pytest.approx(
            rows["bsatnp"]["nll"]["mean"] - rows["tnpd"]["nll"]["mean"])
        assert paired["idw"]["nll"]["mean_diff"] == pytest.approx(
            rows["bsatnp"]["nll"]["mean"] - nll["idw"])
        if entry["n_batches"] > 1:
            assert 0.0 < paired["tnpd"]["nll"]["p"] <= 1.0
    assert "batches" not in results["eval"]
    assert "| tnpd | 2 |" in proc.stdout and "ΔNLL (p)" in proc.stdout
    again = compare()
    assert again.returncode == 0 and "bsatnp seed=4: step 4 of 4 (0 steps" in again.stdout
    assert json.loads(out.read_text())["summary"] == summary


def test_compare_models_costs_only_counts_in_place_matmuls(tmp_path):
    out = tmp_path / "costs.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick", "--costs-only",
         "--models", "bsatnp,bsatnp embed,tnpd,tnpd all-keys dense", "--threads", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert "eval" not in results
    assert set(results["models"]) == {"bsatnp", "bsatnp embed", "tnpd", "tnpd all-keys dense"}
    gflops = {name: cost["gflops"] for name, cost in results["costs"].items()}
    # Same attention pairs: the bias adds q·kᵀ in place (baddbmm_), which must be counted.
    assert gflops["bsatnp"] >= gflops["bsatnp embed"] * 0.98
    # TNP-D as usually implemented also computes the (masked) test × test pairs.
    assert gflops["tnpd all-keys dense"] > 1.2 * gflops["tnpd"]


def test_step_costs_leave_the_timed_models_unchanged():
    """The costs are measured before the evaluation: their optimiser steps must not touch
    the models that are scored next."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare_models
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from bsatnp.models.registry import build_model

    model = build_model(compare_models.variants(
        "gp2d", True, compare_models.QUICK_TASK.model_defaults())["bsatnp"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    costs = compare_models.step_costs({"bsatnp": model}, compare_models.QUICK_TASK, rounds=1)
    assert costs["bsatnp"]["step_s"] > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_compare_models_shared_permutation_reaches_the_gp_task_only(tmp_path):
    out = tmp_path / "compare.json"

    def compare(*extra):
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick",
             "--models", "idw", "--threads", "1", "--shared-permutation", "--out", str(out),
             *extra], capture_output=True, text=True, timeout=600)

    proc = compare()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["meta"]["shared_permutation"] is True
    refused = compare("--task", "sir")
    assert refused.returncode == 2 and "--shared-permutation is for the GP tasks" in refused.stderr


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_matmul_gflops_counts_grouped_convolutions_by_hand(groups):
    """A convolution's forward and backward against the hand count: 2·N·Cout·H·W·(Cin/g)·k²
    for the forward and again for each gradient asked for (input, weight); the counter's own
    backward formula ignores the groups."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from common import matmul_gflops
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    n, c, side, k = 2, 8, 6, 3
    conv = torch.nn.Conv2d(c, c, k, padding=k // 2, groups=groups)
    forward = 2 * n * c * side * side * (c // groups) * k * k
    for input_grad in (True, False):
        x = torch.randn(n, c, side, side, requires_grad=input_grad)
        with matmul_gflops() as gflops:
            conv(x).sum().backward()
        assert gflops() * 1e9 == pytest.approx(forward * (3 if input_grad else 2))


def test_compare_models_equal_cpu_budget(tmp_path):
    """--budget-minutes: each model's steps are the budget over its step time (timed side by
    side, kept in DIR/budget.json); the runs train to them, a rerun keeps them, a model
    added later is timed and added, and another budget for the same runs is refused."""
    runs, out = tmp_path / "runs", tmp_path / "compare.json"

    def compare(models, budget="0.005"):
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick",
             "--models", models, "--threads", "1", "--runs", str(runs), "--out", str(out),
             "--budget-minutes", budget],
            capture_output=True, text=True, timeout=600,
        )

    proc = compare("bsatnp,tnpd")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = json.loads((runs / "budget.json").read_text())
    assert kept["minutes"] == 0.005 and set(kept["models"]) == {"bsatnp", "tnpd"}
    for name, entry in kept["models"].items():
        assert entry["steps"] == max(1, round(60 * 0.005 / entry["step_s"])), name
        log = [json.loads(line) for line in (runs / name / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == entry["steps"], name
    results = json.loads(out.read_text())
    assert results["meta"]["budget_minutes"] == 0.005
    assert results["meta"]["steps"] == {n: e["steps"] for n, e in kept["models"].items()}
    assert "training steps" in proc.stdout
    proc = compare("bsatnp,tnpd,tetnp")  # the kept counts stay; TE-TNP is timed and added
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((runs / "budget.json").read_text())
    assert {n: again["models"][n] for n in kept["models"]} == kept["models"]
    assert "tetnp" in again["models"]
    proc = compare("bsatnp", budget="0.01")
    assert proc.returncode != 0 and "--budget-minutes 0.005" in proc.stderr


def test_compare_models_scores_the_best_validation_state(tmp_path):
    """--state best: validations every tenth of the steps (every step of the quick run's 4),
    the model scored in the state of the lowest validation NLL of its log, recorded in the
    JSON; the same runs with the other state are refused (they validate differently)."""
    runs, out = tmp_path / "runs", tmp_path / "compare.json"

    def compare(state):
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "compare_models.py"), "--quick",
             "--models", "bsatnp", "--threads", "1", "--runs", str(runs), "--out", str(out),
             "--state", state],
            capture_output=True, text=True, timeout=600,
        )

    proc = compare("best")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(line) for line in (runs / "bsatnp" / "log.jsonl").read_text().splitlines()]
    validated = {r["step"]: r["val_nll"] for r in log if "val_nll" in r}
    assert sorted(validated) == [1, 2, 3, 4]
    best = min(validated, key=lambda step: (validated[step], step))
    assert f"bsatnp: scored in its best validation state, step {best} " in proc.stdout
    assert json.loads(out.read_text())["meta"]["state"] == "best"
    proc = compare("last")
    assert proc.returncode != 0 and "validates every 1 steps, not 4" in proc.stderr
