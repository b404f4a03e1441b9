"""Gap to the oracle against wall-clock hours of training, from the runs' own logs.

Each run is one training log, or several chained (a warm restart continues where the run
before it ended), with the config it trained (``--run NAME CONFIG LOG [LOG ...]``). A log's
validation NLL is on that experiment's fixed validation batches (``eval.val_seed``,
``train.val_batches``); this script scores the exact oracle on the same batches once per
config and reports ``gap = validation NLL − oracle NLL`` against training hours and steps.
Hours are summed from the logs' time stamps: a pause of over ``--pause`` minutes between two
records (a run stopped between sessions, or paused) counts as nothing, so the hours are
those the run spent training and validating.

The hours depend on the machine: compare runs by steps as well, or time the steps side by
side (``benchmarks/train_profile.py``).

``--evaluate NAME=CHECKPOINT`` (repeatable) also scores trained models on the experiment's
test batches (``eval.seed``, in-domain, the exact oracle paired per batch; ``--cache`` lets
a long evaluation resume): each model's gap to the oracle, and with two or more the paired
difference of every model's NLL to the first one's (``scipy.stats.ttest_rel``).

Usage:
    python benchmarks/time_to_accuracy.py --config gp2d \
        --run "recipe + restart" gp2d docs/results/gp2d/recipe_log.jsonl \
              docs/results/gp2d/long_log.jsonl \
        --run gp2d_fast gp2d_fast docs/results/gp2d/fast_log.jsonl --target 0.15 \
        --evaluate gp2d_fast=runs/gp2d_fast/last.safetensors --evaluate gp2d=gp2d \
        --test-batches 300 --cache runs/tta_cache \
        --out benchmarks/results/time_to_accuracy_gp2d.json \
        --png docs/results/gp2d/time_to_accuracy.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import run_meta, save_figure, write_json

from bsatnp.evaluate import evaluate
from bsatnp.experiment import load_experiment
from bsatnp.io.checkpoint import load_model
from bsatnp.metrics import gaussian_metrics, paired_t_test, summarize
from bsatnp.pretrained import checkpoint_path
from bsatnp.tasks.base import batch_generator


def oracle_validation_nll(config: str) -> tuple[float, float]:
    """The exact oracle's mean NLL (and s.e.) on the validation batches the trainer scores."""
    experiment = load_experiment(config)
    task = experiment.task
    scores = []
    for index in range(experiment.train.val_batches):
        batch, oracle = task.sample_with_oracle(
            batch_generator(experiment.eval.val_seed, index), "valid")
        scores.append(gaussian_metrics(oracle.mean, oracle.stddev, batch.f_test,
                                       batch.test_mask()))
    return summarize(scores)["nll"]


def curve(logs: list[Path], oracle_nll: float, pause_s: float) -> list[dict[str, float]]:
    """``[{hours, step, val_nll, gap}]`` at every validation of the chained logs."""
    points = []
    hours, last_time, step_offset = 0.0, None, 0
    for log in logs:
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        for record in records:
            if last_time is not None and 0 < record["time"] - last_time <= pause_s:
                hours += (record["time"] - last_time) / 3600
            last_time = record["time"]
            if "val_nll" in record:
                points.append({"hours": hours, "step": step_offset + record["step"],
                               "val_nll": record["val_nll"],
                               "gap": record["val_nll"] - oracle_nll})
        step_offset += max(r["step"] for r in records)
    return points


def test_scores(config: str, checkpoints: dict[str, str], n_batches: int,
                cache: str | None) -> dict[str, Any]:
    """Each model's in-domain gap to the oracle on the test batches, and paired NLLs.

    ``paired``: every model after the first against the first, per test batch.
    """
    experiment = load_experiment(config)
    models = {name: load_model(checkpoint_path(path)) for name, path in checkpoints.items()}
    result = evaluate(models, domains=["in_domain"], n_batches=n_batches,
                      seed=experiment.eval.seed, task=experiment.task, cache_dir=cache,
                      per_batch=True)
    scored = result["domains"]["in_domain"]
    batches = result["batches"]["in_domain"]
    nll = {name: [b["nll"] for b in batches[name]] for name in models}
    first, *others = models
    out = {"seed": experiment.eval.seed, "n_batches": n_batches, "task": result["task"],
           "oracle": scored["oracle"]["nll"],
           "models": {name: {"nll": scored[name]["nll"], "gap": scored[f"gap/{name}"]["nll"],
                             "rmse": scored[name]["rmse"], "cov95": scored[name]["cov95"],
                             "checkpoint": checkpoints[name]} for name in models},
           "paired": {f"{name} - {first}": paired_t_test(nll[name], nll[first])
                      for name in others}}
    for name, entry in out["models"].items():
        print(f"test, {n_batches} batches: {name} NLL {entry['nll']['mean']:.4f}, gap "
              f"{entry['gap']['mean']:.4f} ± {entry['gap']['se']:.4f}")
    for pair, test in out["paired"].items():
        print(f"paired NLL {pair}: {test['mean_diff']:+.4f} ± {test['se']:.4f} "
              f"(p = {test['p']:.2g})")
    return out


def first_below(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first validation whose gap is at most ``target``, or ``None``."""
    return next((p for p in points if p["gap"] <= target), None)


def plot(runs: dict[str, list[dict[str, float]]], target: float, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_hours, by_steps) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for name, points in runs.items():
        by_hours.plot([p["hours"] for p in points], [p["gap"] for p in points], "o-",
                      ms=3, label=name)
        by_steps.plot([p["step"] for p in points], [p["gap"] for p in points], "o-",
                      ms=3, label=name)
    for ax, label in ((by_hours, "training hours (2 CPU cores, as logged)"),
                      (by_steps, "steps (batch 8)")):
        ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target gap {target}")
        ax.set_xlabel(label)
        ax.set_ylabel("validation NLL − oracle NLL (nats)")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
    by_hours.legend(fontsize="small")
    fig.suptitle("2D GP: gap to the exact oracle on the 32 validation batches")
    save_figure(fig, out_png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gp2d",
                        help="the experiment whose test batches score --evaluate's models")
    parser.add_argument("--run", action="append", nargs="+", required=True,
                        metavar="NAME CONFIG LOG",
                        help="a run: its name, the config it trained (whose validation "
                             "batches its logs scored) and its log(s), chained in order")
    parser.add_argument("--target", type=float, default=0.15, help="gap to reach (nats)")
    parser.add_argument("--pause", type=float, default=2.0,
                        help="gaps between records longer than this many minutes are pauses")
    parser.add_argument("--out", default="benchmarks/results/time_to_accuracy_gp2d.json")
    parser.add_argument("--png", help="also write the figure here")
    parser.add_argument("--evaluate", action="append", default=[],
                        metavar="NAME=CHECKPOINT",
                        help="also score this model on the test batches (a checkpoint or "
                             "a shipped model's name)")
    parser.add_argument("--test-batches", type=int, default=300)
    parser.add_argument("--cache", help="per-batch scores directory (resumable evaluation)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    summary: dict[str, Any] = {}
    oracles: dict[str, tuple[float, float]] = {}
    for spec in args.run:
        if len(spec) < 3:
            parser.error(f"--run needs NAME CONFIG LOG [LOG ...], got {spec}")
        name, config, *paths = spec
        if config not in oracles:
            oracles[config] = oracle_validation_nll(config)
            print(f"{config}: oracle validation NLL {oracles[config][0]:.4f} ± "
                  f"{oracles[config][1]:.4f}")
        logs = [Path(p) for p in paths]
        points = curve(logs, oracles[config][0], args.pause * 60)
        runs[name] = points
        reached = first_below(points, args.target)
        last = points[-1]
        summary[name] = {"config": config, "logs": [str(p) for p in logs],
                         "oracle_val_nll": oracles[config][0],
                         "oracle_val_nll_se": oracles[config][1],
                         "reached": reached, "last": last}
        when = ("not reached" if reached is None else
                f"reached at {reached['hours']:.2f} h, step {reached['step']}")
        print(f"{name}: last gap {last['gap']:.3f} at {last['hours']:.2f} h, step "
              f"{last['step']}; gap <= {args.target}: {when}")
    test = None
    if args.evaluate:
        test = test_scores(args.config, dict(spec.split("=", 1) for spec in args.evaluate),
                           args.test_batches, args.cache)
    write_json(args.out, {**run_meta(), "config": args.config, "target": args.target,
                          "pause_minutes": args.pause, "summary": summary, "runs": runs,
                          "test": test})
    if args.png:
        plot(runs, args.target, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
