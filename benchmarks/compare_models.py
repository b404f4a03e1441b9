"""Side-by-side comparison on any registered task: BSA-TNP, its ablations and the baselines.

``--task`` picks the task (default ``gp2d``: the paper's 2D GP, with every BSA-TNP ablation);
the task's bundled config gives its sizes, priors, batch size and seeds, and
:data:`VARIANTS` lists the models the paper compares on it.

Every trainable model gets the same training budget and hyperparameters (SPEC §7, with
the cosine decay over ``--steps``), the same training batches (same seed) and the same
evaluation batches; the exact GP oracle is scored once per evaluation batch. The
training-free IDW and k-NN baselines have their predictive std calibrated on the
validation batches. Costs are measured side by side on one fixed B=8 batch (512 context
slots, 128–511 valid, 1024 test points): models take turns step by step, so machine noise
hits them alike; GFLOPs per training step (forward + backward) are counted by
``torch.utils.flop_counter`` (matrix products only: exponentials are not counted).

A full comparison takes about a CPU-day on 2 cores, so it can be done in pieces: with
``--runs DIR`` each variant trains in ``DIR/<name>`` and a rerun resumes it (exactly) from its
last checkpoint, ``--minutes`` bounds the training time of one invocation, and the test scores
of every batch are kept in ``DIR/scores`` (``<domain>/<model>.jsonl``, one file per model and
the oracle) so that an interrupted evaluation continues too, and a rerun with more
``--models`` scores only the added ones. The
tables are written once every variant has reached ``--steps``.

With ``--seeds 0,1,2`` every trainable model is trained once per seed (the seed of its
initial weights and of its training batches), each in its own run directory
(``DIR/seed<k>/<name>``, resumed as above), and all are scored on the same test batches
(named ``<name> seed=<k>`` in the per-seed tables and ``DIR/scores``). The summary gives,
per model and domain, the mean ± s.d. over seeds and a paired t-test of the reference model
(BSA-TNP, the task's first row) against every other row, one pair per test batch (each
model's per-batch scores averaged over its seeds; :func:`bsatnp.reports.seed_summary`);
the JSON gains it as ``summary`` beside the per-seed ``eval``. Without ``--seeds`` the
models train once with the task config's seed, in ``DIR/<name>``, as before.

With ``--state best`` every trained model validates every tenth of its steps (on the task's
validation batches, drawn apart from the test batches) and is scored in its best validation
state (``best.safetensors``), as the paper does on Gneiting, Beijing and ERA5; the default
scores the last state. Runs of the two states validate differently, so each needs its own
``--runs`` directory (a rerun with the other state is refused).

With ``--budget-minutes M`` the models get the same CPU time instead of the same steps: each
trains for ``M`` minutes' worth of its own steps (``M · 60 / step seconds``, the step timed side by
side with the others on the fixed batch before any training, with a fresh initialisation), its
cosine schedule over those steps. The step counts are kept in ``DIR/budget.json``, so that reruns
and added seeds train to the same counts; a model added later is timed then.

Usage:
    python benchmarks/compare_models.py --quick            # CI-sized, about a minute
    python benchmarks/compare_models.py --steps 5000 --eval-batches 500 --scaled-batches 50
    python benchmarks/compare_models.py --steps 1000 --runs runs/compare --minutes 150  # rerun
    python benchmarks/compare_models.py --models bsatnp,tnpd --steps 200
    python benchmarks/compare_models.py --seeds 0,1,2 --steps 5000 --runs runs/seeds
    python benchmarks/compare_models.py --models "bsatnp,tnpd,tetnp paper,convcnp paper" \
        --shared-permutation --seeds 0,1,2 --steps 1000 --runs runs/paper  # issue 33
    python benchmarks/compare_models.py --models "bsatnp,tnpd,tetnp paper32,convcnp paper,idw,knn" \
        --shared-permutation --seeds 0,1,2 --budget-minutes 5 --runs runs/budget \
        --eval-batches 60 --scaled-batches 15  # equal CPU (docs/results.md; also --task sir)
    python benchmarks/compare_models.py --costs-only       # parameters, step time, GFLOPs
    python benchmarks/compare_models.py --task geodesic --steps 2000 --runs runs/geodesic
    python benchmarks/compare_models.py --task beijing --quick   # also era5 (real data)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import matmul_gflops, run_meta, write_json
from torch import nn

from bsatnp.baselines import LOCAL_AVERAGES, calibrated_local_averages
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, load_experiment
from bsatnp.experiment_trainer import build_trainer
from bsatnp.io.checkpoint import load_checkpoint
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNPConfig
from bsatnp.models.convcnp import ConvCNPConfig
from bsatnp.models.registry import ModelConfig, build_model, family_name
from bsatnp.models.tetnp import TETNPConfig
from bsatnp.models.tnpd import TNPDConfig
from bsatnp.reports import seed_summary
from bsatnp.tasks import Task, eval_batches, task_names
from bsatnp.tasks.beijing import BeijingTask
from bsatnp.tasks.era5 import Era5Task
from bsatnp.tasks.gneiting import GneitingTask
from bsatnp.tasks.gp import GPTask
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.sir import SIRTask

TRAINING_FREE = tuple(LOCAL_AVERAGES)
COST_ONLY = ("tnpd all-keys dense",)
"""Rows timed but not trained: TNP-D as usually implemented (attention over all tokens, test
keys masked, dense), which predicts exactly like ``tnpd`` (masked = dropped)."""
# Small widths for --quick: every family at a fraction of its cost.
QUICK = {
    "bsatnp": {"dim": 32, "num_blocks": 2, "qkv_dim": 32, "ffn_dim": 64, "embed_hidden": (64,),
               "head_hidden": (64,)},
    "tnpd": {"dim": 32, "num_blocks": 2, "qkv_dim": 32, "ffn_dim": 64, "embed_hidden": (64,),
             "head_hidden": (64,)},
    "tetnp": {"dim": 32, "num_layers": 2, "qkv_dim": 32, "ffn_dim": 64, "num_pseudo": 8},
    "convcnp": {"channels": 16, "points_per_unit": 8},
}

QUICK_TASK = GP2DTask(batch_size=2, n_ctx=64, n_test=128, min_ctx=16, max_ctx=63)
"""The 2D-GP task of --quick."""
QUICK_SIZES = {"batch_size": 2, "n_ctx": 32, "n_test": 32, "min_ctx": 8, "max_ctx": 31}
"""Sizes of the other GP tasks under --quick."""


def quick_task(task: Task) -> Task:
    """A CI-sized version of ``task``."""
    if isinstance(task, GP2DTask):
        return replace(QUICK_TASK, box=task.box, shared_permutation=task.shared_permutation)
    if isinstance(task, GPTask):
        return replace(task, **QUICK_SIZES)
    if isinstance(task, GneitingTask):
        return replace(task, batch_size=2, n_locations=40, n_slots=8, min_ctx=2, max_ctx=7)
    if isinstance(task, SIRTask):
        return replace(task, batch_size=2, side=12, n_frames=5, n_ctx=30, min_ctx=5,
                       max_ctx=29, n_test=50, scaled_side=24, scaled_frames=6,
                       scaled_min_ctx=20)
    if isinstance(task, BeijingTask):
        return replace(task, batch_size=2, n_ctx=48, n_test=12)
    if isinstance(task, Era5Task):
        return replace(task, batch_size=2, block=8, n_slots=16, min_ctx=4, max_ctx=15)
    return task.with_batch_size(2)


class Configs:
    """Model configs with one task's roles (and ``--quick``'s small widths).

    Args:
        roles: The task's ``model_defaults()`` (role widths, likelihood).
        quick: Small widths (CI-sized).
    """

    def __init__(self, roles: dict[str, Any], quick: bool) -> None:
        self.roles, self.quick = roles, quick

    def _small(self, family: str) -> dict[str, Any]:
        return QUICK[family] if self.quick else {}

    def _roles(self, cls: type) -> dict[str, Any]:
        known = cls.__dataclass_fields__
        return {k: v for k, v in self.roles.items() if k in known}

    def __call__(self, cls: type, family: str, **fields: Any) -> ModelConfig:
        """A ``family`` config (class ``cls``): its defaults, the roles, then ``fields``."""
        return cls(**self._roles(cls), **self._small(family), **fields)

    def preset(self, name: str) -> ModelConfig:
        """The architecture of the bundled config ``name``, with the roles.

        Under ``--quick`` it gets its family's small widths, but a preset without
        pseudo-tokens (TE-TNP vanilla) stays without.
        """
        model = load_experiment(name).model
        small = dict(self._small(family_name(model)))
        if getattr(model, "num_pseudo", None) == 0:
            small.pop("num_pseudo", None)
        return replace(model, **self._roles(type(model)), **small)


def variants(task: str, quick: bool, roles: dict[str, Any]) -> dict[str, ModelConfig]:
    """The compared models of ``task`` by row name (ablations change one thing each).

    Args:
        task: Task name (a key of :data:`VARIANTS`).
        quick: Small widths (CI-sized).
        roles: The task's ``model_defaults()`` (role widths, likelihood).
    """
    return VARIANTS[task](Configs(roles, quick))


def _paper_baselines(config: Configs) -> dict[str, ModelConfig]:
    """TE-TNP and ConvCNP as the paper configures them (issue 33): the bundled presets
    ``gp2d_tetnp_paper`` (128 pseudo-tokens), ``gp2d_tetnp_paper32``, ``gp2d_tetnp_vanilla``
    (no pseudo-tokens) and ``gp2d_convcnp_paper``, with the task's roles."""
    return {"tetnp paper": config.preset("gp2d_tetnp_paper"),
            "tetnp paper32": config.preset("gp2d_tetnp_paper32"),
            "tetnp vanilla": config.preset("gp2d_tetnp_vanilla"),
            "convcnp paper": config.preset("gp2d_convcnp_paper")}


def _gp2d_variants(config: Any) -> dict[str, ModelConfig]:
    bsatnp = config(BSATNPConfig, "bsatnp")
    spec = bsatnp.bias_s
    return {
        "bsatnp": bsatnp,
        "bsatnp init=spread": replace(bsatnp, bias_s=replace(spec, init="spread")),
        **{f"bsatnp F={f}": replace(bsatnp, bias_s=replace(spec, num_basis=f)) for f in (1, 3, 10)},
        "bsatnp embed": replace(bsatnp, use_s="embed"),
        "bsatnp embed+bias": replace(bsatnp, use_s="both"),
        "tnpd": config(TNPDConfig, "tnpd"),
        "tnpd all-keys dense": config(TNPDConfig, "tnpd", keys="all_masked", backend="dense"),
        "tetnp": config(TETNPConfig, "tetnp"),
        "convcnp": config(ConvCNPConfig, "convcnp"),
        **_paper_baselines(config),
    }


def _geodesic_variants(config: Any) -> dict[str, ModelConfig]:
    """PROTOCOLS §3: the bias on the great-circle distance in degrees, on the Euclidean
    distance of raw (lon, lat), and (lon, lat) embedded without a bias (SA-TNP)."""
    bsatnp = config(BSATNPConfig, "bsatnp")
    return {
        "geo-bsatnp": replace(bsatnp, bias_s=replace(bsatnp.bias_s,
                                                     distance="great_circle_degrees")),
        "bsatnp": bsatnp,
        "sa-tnp": replace(bsatnp, use_s="embed"),
    }


def _fixed_effects_variants(config: Any) -> dict[str, ModelConfig]:
    """PROTOCOLS §4: x embedded, s biased; the ablation ignores the covariates."""
    bsatnp = config(BSATNPConfig, "bsatnp", min_std=0.05)
    return {"bsatnp": bsatnp, "bsatnp no-x": replace(bsatnp, dim_x=0)}


def _sir_variants(config: Any) -> dict[str, ModelConfig]:
    """PROTOCOLS §5: BSA-TNP with a TISA bias on the unsquared distance; the baselines with
    3-class heads."""
    bsatnp = config(BSATNPConfig, "bsatnp")
    return {"bsatnp": replace(bsatnp, bias_s=replace(bsatnp.bias_s, family="tisa")),
            "tnpd": config(TNPDConfig, "tnpd"), "tetnp": config(TETNPConfig, "tetnp"),
            "convcnp": config(ConvCNPConfig, "convcnp"), **_paper_baselines(config)}


def _gneiting_variants(config: Any) -> dict[str, ModelConfig]:
    """PROTOCOLS §6: s and t embedded and biased (the headline), bias only, embed only;
    TNP-D (pre-norm, as the paper runs it here) and TE-TNP."""
    both = config(BSATNPConfig, "bsatnp", use_s="both", use_t="both", min_std=0.05)
    return {"bsatnp embed+bias": both,
            "bsatnp bias": replace(both, use_s="bias", use_t="bias"),
            "bsatnp embed": replace(both, use_s="embed", use_t="embed"),
            "tnpd": config(TNPDConfig, "tnpd", norm="pre", min_std=0.05),
            "tetnp": config(TETNPConfig, "tetnp", min_std=0.05)}


def _beijing_variants(config: Any) -> dict[str, ModelConfig]:
    """PROTOCOLS §8: x, s and t embedded, s and t also biased (the headline), bias only,
    embed only; TNP-D (pre-norm) and TE-TNP."""
    both = config(BSATNPConfig, "bsatnp", use_s="both", use_t="both")
    return {"bsatnp embed+bias": both,
            "bsatnp bias": replace(both, use_s="bias", use_t="bias"),
            "bsatnp embed": replace(both, use_s="embed", use_t="embed"),
            "tnpd": config(TNPDConfig, "tnpd", norm="pre"),
            "tetnp": config(TETNPConfig, "tetnp")}


def _era5_variants(config: Any) -> dict[str, ModelConfig]:
    """PROTOCOLS §7: x (hour of day) embedded, s and t biased; TNP-D and TE-TNP."""
    return {"bsatnp": config(BSATNPConfig, "bsatnp", use_s="bias", use_t="bias"),
            "tnpd": config(TNPDConfig, "tnpd"), "tetnp": config(TETNPConfig, "tetnp")}


VARIANTS = {
    "gp2d": _gp2d_variants,
    "multiscale": lambda config: {"bsatnp": config(BSATNPConfig, "bsatnp"),
                                  "tetnp": config(TETNPConfig, "tetnp")},
    "geodesic": _geodesic_variants,
    "fixed_effects": _fixed_effects_variants,
    "sir": _sir_variants,
    "gneiting": _gneiting_variants,
    "beijing": _beijing_variants,
    "era5": _era5_variants,
}
"""Task name → the models compared on it (PROTOCOLS §1–8)."""


def train(name: str, experiment: ExperimentConfig, out_dir: Path,
          deadline: float | None, device: str, best: bool = False) -> nn.Module | None:
    """Train one variant on ``device`` to ``experiment.train.steps`` (or its early stop),
    resuming ``out_dir/last.safetensors`` (a checkpoint from any device).

    Returns:
        The trained model, in its last state or with ``best`` in its best validation state
        (``out_dir/best.safetensors``), or ``None`` when ``deadline``
        (``time.monotonic()``) came first.
    """
    last = out_dir / "last.safetensors"
    trainer = build_trainer(experiment, resume=last if last.exists() else None, out_dir=out_dir,
                            overwrite=not last.exists(),  # a run killed before its first save
                            device=device)
    steps = experiment.train.steps
    if trainer.config.steps != steps:
        sys.exit(f"{last} is a run of {trainer.config.steps} steps, not {steps}; "
                 "use another --runs directory")
    if trainer.config.seed != experiment.train.seed:
        sys.exit(f"{last} is a run with seed {trainer.config.seed}, not "
                 f"{experiment.train.seed}; use another --runs directory")
    if trainer.config.val_every != experiment.train.val_every:
        sys.exit(f"{last} validates every {trainer.config.val_every} steps, not "
                 f"{experiment.train.val_every} (another --state); use another --runs directory")
    start, first = time.perf_counter(), trainer.step
    budget = None if deadline is None else deadline - time.monotonic()
    if trainer.step < steps and trainer.stopped is None and (budget is None or budget > 0):
        trainer.fit(progress=False, max_seconds=budget)
    print(f"  {name}: step {trainer.step} of {steps} ({trainer.step - first} steps in "
          f"{time.perf_counter() - start:.0f} s)", flush=True)
    if trainer.stopped is not None:
        print(f"  {name}: {trainer.stopped}", flush=True)
    if trainer.step < steps and trainer.stopped is None:
        return None
    if best:
        kept = load_checkpoint(out_dir / "best.safetensors")
        trainer.model.load_state_dict(kept.model_state)
        print(f"  {name}: scored in its best validation state, step {kept.step} "
              f"(validation NLL {kept.best_metric:.4f})", flush=True)
    return trainer.model


def step_costs(models: dict[str, nn.Module], task: Task, rounds: int,
               device: str = "cpu") -> dict[str, dict]:
    """Median training-step seconds (models take turns) and GFLOPs per step on ``device``,
    on one batch of ``task`` (give it the training batch size).

    The steps update copies: the models passed in are left as they are (they are scored next).
    """
    batch = task.sample(torch.Generator().manual_seed(123)).to(device)
    cuda = torch.device(device).type == "cuda"
    models = {n: copy.deepcopy(m) for n, m in models.items()}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}

    def step(name: str) -> None:
        model = models[name]
        loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:  # warm-ups, and the GFLOPs of one step
        if cuda:  # counted on the CPU only: the counter cannot trace compiled flex_attention
            times[name].append(math.nan)
        else:
            with matmul_gflops() as gflops:
                step(name)
            times[name].append(gflops())
        for _ in range(3):  # warm-ups outside the counter: compiled kernels (the SIR bias's
            step(name)      # took its third and fourth steps to settle), caches
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            step(name)
            if cuda:  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: {"gflops": t[0], "step_s": statistics.median(t[1:]), "times": t[1:]}
            for name, t in times.items()}


def budget_steps(configs: dict[str, ModelConfig], task: Task, minutes: float, path: Path,
                 rounds: int, device: str) -> dict[str, int]:
    """Training steps per model for an equal CPU budget of ``minutes``: the budget over each
    model's step seconds, timed side by side (:func:`step_costs`, fresh initialisations, on
    ``task``'s fixed batch). Kept in ``path`` (``{"minutes", "models": {name: {"step_s",
    "steps"}}}``): models already there keep their counts, the others are timed and added.
    """
    kept = json.loads(path.read_text()) if path.exists() else {"minutes": minutes, "models": {}}
    if kept["minutes"] != minutes:
        sys.exit(f"{path} holds steps for --budget-minutes {kept['minutes']:g}, not "
                 f"{minutes:g}; use another --runs directory")
    missing = [name for name in configs if name not in kept["models"]]
    if missing:
        torch.manual_seed(0)
        models = {name: build_model(configs[name]).to(device) for name in missing}
        for name, cost in step_costs(models, task, rounds, device).items():
            kept["models"][name] = {"step_s": cost["step_s"],
                                    "steps": max(1, round(60 * minutes / cost["step_s"]))}
        write_json(path, kept)
    return {name: kept["models"][name]["steps"] for name in configs}


def tables(results: dict[str, Any]) -> str:
    """Markdown: one cost table and one accuracy table per domain."""
    costs = results["costs"]
    base = costs.get("bsatnp", {}).get("step_s")
    steps = results["meta"]["steps"]
    per_model = isinstance(steps, dict)  # an equal CPU budget: steps of each model
    lines = ["| model | family | parameters | step s | step / BSA-TNP step | GFLOPs/step |"
             + (" training steps |" if per_model else ""),
             "|---|---|---|---|---|---|" + ("---|" if per_model else "")]
    for name, info in results["models"].items():
        cost = costs.get(name)
        step = f"{cost['step_s']:.3f}" if cost else "–"
        ratio = f"{cost['step_s'] / base:.2f}" if cost and base else "–"
        gflops = f"{cost['gflops']:.1f}" if cost and math.isfinite(cost["gflops"]) else "–"
        lines.append(f"| {name} | {info['family']} | {info['parameters']:,} | {step} | {ratio} "
                     f"| {gflops} |" + (f" {steps.get(name, '–')} |" if per_model else ""))
    for domain, entry in results.get("eval", {"domains": {}})["domains"].items():
        facts = ", ".join(f"{k} {entry[k]}" for k in ("box", "n_ctx", "n_test") if k in entry)
        names = [n for n, v in entry.items()  # the models (per seed) and the oracle
                 if isinstance(v, dict) and "nll" in v
                 and not n.startswith(("gap", "vs_in_domain"))]
        metrics = ("nll", "rmse", "mae", "cov95") if "rmse" in entry[names[0]] else (
            "nll", "acc", "brier", "ece")
        lines += ["", f"**{domain}** ({entry['n_batches']} batches × {entry['batch_size']} "
                  f"tasks; {facts})", "",
                  f"| model | {' | '.join(m.upper() for m in metrics)} | NLL − oracle "
                  "| NLL − in-domain NLL |", "|---|" + "---|" * (len(metrics) + 2)]
        for name in names:
            row = entry[name]
            gap = entry.get(f"gap/{name}", {}).get("nll")
            shift = entry.get(f"vs_in_domain/{name}", {}).get("nll")
            cells = [_fmt(row[m]) for m in metrics]
            cells += [_fmt(gap) if gap else "–", _fmt(shift) if shift else "–"]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    if "summary" in results:
        lines += seed_table(results["summary"], results["meta"]["seeds"])
    return "\n".join(lines) + "\n"


def seed_table(summary: dict[str, Any], seeds: list[int]) -> list[str]:
    """Markdown lines: per domain, mean ± s.d. over seeds and the paired tests."""
    reference, metrics = summary["reference"], summary["metrics"]
    lines = []
    for domain, entry in summary["domains"].items():
        lines += ["", f"**{domain}, seeds {', '.join(map(str, seeds))}**: mean ± s.d. over "
                  f"seeds; {reference} − model per test batch (scores averaged over seeds), "
                  "paired t-test", "",
                  "| model | seeds | " + " | ".join(m.upper() for m in metrics) + " | "
                  + " | ".join(f"Δ{m.upper()} (p)" for m in metrics) + " |",
                  "|---|---|" + "---|" * (2 * len(metrics))]
        for name, row in entry["models"].items():
            cells = [str(row["seeds"])]
            cells += [_fmt({"mean": row[m]["mean"], "se": row[m]["sd"]}) for m in metrics]
            test = entry["paired"].get(name)
            cells += [f"{test[m]['mean_diff']:+.3f} (p={test[m]['p']:.2g})" if test else "–"
                      for m in metrics]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _fmt(stat: dict[str, float | None]) -> str:
    se = stat["se"]
    if se is None or not math.isfinite(se):  # one batch: no standard error
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {se:.3f}"


def _seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"repeated seed in {text!r}")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="gp2d",
                        choices=[t for t in task_names() if t in VARIANTS],
                        help="task to compare on (its bundled config gives sizes and seeds)")
    parser.add_argument("--quick", action="store_true",
                        help="small models, small tasks, a few steps: a CI-sized check")
    parser.add_argument("--steps", type=int, default=5000, help="training steps per model")
    parser.add_argument("--batch-size", type=int,
                        help="training batch size (default: the task config's train.batch_size)")
    parser.add_argument("--eval-batches", type=int, default=500,
                        help="test batches of every domain but scaled")
    parser.add_argument("--scaled-batches", type=int, default=50,
                        help="test batches of the 2D GP's scaled domain (4× the points)")
    parser.add_argument("--models", help="comma-separated subset of the row names")
    parser.add_argument("--seeds", type=_seeds, metavar="S,S,...",
                        help="train every model once per seed (DIR/seed<k>/<name>) and report "
                             "mean ± s.d. over seeds and paired t-tests against BSA-TNP "
                             "(default: once, with the task config's seed)")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per model")
    parser.add_argument("--costs-only", action="store_true",
                        help="no training or evaluation: parameters, step time and GFLOPs")
    parser.add_argument("--runs", metavar="DIR",
                        help="keep the runs in DIR/<model> and the test scores in DIR/scores; "
                             "a rerun resumes both (default: a temporary directory)")
    parser.add_argument("--minutes", type=float,
                        help="training budget of this invocation (rerun with the same --runs "
                             "to continue)")
    parser.add_argument("--budget-minutes", type=float,
                        help="the same CPU time for every model instead of the same --steps: "
                             "each trains this many minutes' worth of its own steps, timed "
                             "side by side first and kept in DIR/budget.json (needs --runs)")
    parser.add_argument("--shared-permutation", action="store_true",
                        help="GP tasks: one context/test permutation per batch, as the "
                             "reference draws them (default: one per task)")
    parser.add_argument("--state", choices=("last", "best"), default="last",
                        help="the state every trained model is scored in: the last, or the "
                             "best of validations every tenth of its steps (the validation "
                             "batches are the task's validation split, apart from the test "
                             "batches; the paper's choice on Gneiting, Beijing and ERA5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="where models train, are timed and predict (e.g. cuda); the "
                             "batches and the oracle stay on the CPU")
    parser.add_argument("--out", help="JSON results (default: benchmarks/results/"
                        "compare_models.json, or compare_models_<task>.json)")
    args = parser.parse_args()
    if args.minutes is not None and args.runs is None:
        parser.error("--minutes needs --runs (where the unfinished runs wait for a rerun)")
    if args.budget_minutes is not None and (args.runs is None or args.costs_only):
        parser.error("--budget-minutes needs --runs (where the step counts are kept) and "
                     "training (not --costs-only)")
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        parser.error(f"--budget-minutes must be > 0, got {args.budget_minutes:g}")
    torch.set_num_threads(args.threads)

    experiment = load_experiment(args.task)
    task = experiment.task
    if args.shared_permutation:
        if not isinstance(task, GPTask):
            parser.error(f"--shared-permutation is for the GP tasks, not {args.task}")
        task = replace(task, shared_permutation=True)
        experiment = replace(experiment, task=task)
    configs = variants(args.task, args.quick, task.model_defaults())
    full_task = task
    if args.quick:
        task = quick_task(task)
        args.steps, args.eval_batches, args.scaled_batches, args.rounds = 4, 2, 1, 1
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - set(configs) - set(TRAINING_FREE))
        if unknown:
            sys.exit(f"unknown models {unknown}; known: {[*configs, *TRAINING_FREE]}")
        configs = {name: c for name, c in configs.items() if name in wanted}
    if args.batch_size is not None:
        experiment = replace(experiment, train=replace(experiment.train,
                                                       batch_size=args.batch_size))
    train_config = replace(experiment.train, val_batches=2 if args.quick else 16)
    trainable = {name: c for name, c in configs.items() if name not in COST_ONLY}
    steps = {name: args.steps for name in trainable}
    if args.budget_minutes is not None:
        steps = budget_steps(trainable, (task if args.quick else full_task).with_batch_size(
            train_config.batch_size), args.budget_minutes, Path(args.runs) / "budget.json",
            args.rounds, args.device)
    seeds = args.seeds or [train_config.seed]
    held_out = {experiment.eval.seed, experiment.eval.val_seed} & set(seeds)
    if held_out:
        parser.error(f"--seeds {sorted(held_out)}: the test and validation batches' seeds")
    models: dict[str, nn.Module] = {}  # the first seed's, for the costs
    trained: dict[str, nn.Module] = {}  # every seed's, by evaluated name

    def label(name: str, seed: int) -> str:
        return f"{name} seed={seed}" if args.seeds else name

    groups = {name: [label(name, seed) for seed in seeds]  # the evaluated names of each row
              for name in configs if name not in COST_ONLY}
    free: dict[str, nn.Module] = {}
    scored = summary = None
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    unfinished = []
    runs = (contextlib.nullcontext(args.runs) if args.runs is not None
            else tempfile.TemporaryDirectory(prefix="compare_models_"))
    with runs as out_root:
        for seed in seeds[:1] if args.costs_only else seeds:
            root = Path(out_root) / f"seed{seed}" if args.seeds else Path(out_root)
            for name, config in configs.items():
                torch.manual_seed(seed)
                if args.costs_only or name in COST_ONLY:
                    if seed == seeds[0]:
                        models[name] = build_model(config).to(args.device)
                    continue
                n = steps[name]
                variant = replace(experiment, model=config, task=task,
                                  train=replace(train_config, seed=seed, steps=n,
                                                val_every=n if args.state == "last"
                                                else max(1, n // 10), save_every=min(n, 100)))
                out_dir = root / name.replace(" ", "_").replace("=", "").replace("+", "_")
                model = train(label(name, seed), variant, out_dir, deadline, args.device,
                              best=args.state == "best")
                if model is None:
                    unfinished.append(label(name, seed))
                else:
                    trained[label(name, seed)] = model
                    if seed == seeds[0]:
                        models[name] = model
    if unfinished:
        print(f"Not yet at their steps: {', '.join(unfinished)}. Rerun the same command "
              f"to continue from {args.runs}; the tables need every model trained.")
        return
    if not args.costs_only:  # Gaussian or class shares, as the task's likelihood
        wanted = args.models.split(",") if args.models else TRAINING_FREE
        validation = eval_batches(task, train_config.val_batches, experiment.eval.val_seed,
                                  split="valid")
        free = calibrated_local_averages([n for n in TRAINING_FREE if n in wanted], validation,
                                         task.likelihood)
    costs = step_costs(models, (task if args.quick else full_task).with_batch_size(
        train_config.batch_size), args.rounds, args.device)
    if not args.costs_only:
        counts = {d: args.scaled_batches if d == "scaled" else args.eval_batches
                  for d in task.domains}
        evaluated = {name: trained[name] for names in groups.values() for name in names}
        scored = evaluate({**evaluated, **free}, n_batches=counts, seed=experiment.eval.seed,
                          task=task, progress=False, per_batch=bool(args.seeds),
                          cache_dir=None if args.runs is None else Path(args.runs) / "scores")
        if args.seeds and groups:
            summary = seed_summary(scored, {**groups, **{name: [name] for name in free}},
                                   reference=next(iter(groups)),
                                   metrics=("nll", "rmse" if task.likelihood == "gaussian"
                                            else "acc"))
        scored.pop("batches", None)  # kept in DIR/scores with --runs
    results = {
        "meta": run_meta(args.threads,
                         device=(torch.cuda.get_device_name(args.device)
                                 if torch.device(args.device).type == "cuda" else "cpu"),
                         task=args.task,
                         steps=0 if args.costs_only else (
                             steps if args.budget_minutes is not None else args.steps),
                         **({} if args.budget_minutes is None
                            else {"budget_minutes": args.budget_minutes}),
                         quick=args.quick, shared_permutation=args.shared_permutation,
                         state=args.state,
                         **({"seeds": seeds} if args.seeds else {})),
        "models": {
            name: {"family": family_name(m.config) if name in models else "training-free",
                   "parameters": sum(p.numel() for p in m.parameters())}
            for name, m in {**models, **free}.items()
        },
        "costs": costs,
        **({} if scored is None else {"eval": scored}),
        **({} if summary is None else {"summary": summary}),
    }
    print(tables(results))
    suffix = "" if args.task == "gp2d" else f"_{args.task}"
    out = write_json(args.out or f"benchmarks/results/compare_models{suffix}.json", results,
                     default=str)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
