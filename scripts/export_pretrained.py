"""Ship a trained model in the package: weights + model card, scored against the oracle.

    python scripts/export_pretrained.py runs/gp2d_recipe/last.safetensors gp2d \
        --batches in_domain=500,shifted=500,scaled=20 --summary "..."

Writes ``src/bsatnp/pretrained/<name>.safetensors`` (weights and model config, no optimiser
state) whose card holds the task and its envelope (box, context sizes, priors, the values and
spacing of a training context), the training budget and recipe, and the metrics of the
evaluation with standard errors (in the card and printed). ``bsatnp models`` lists it;
``Predictor.from_pretrained(name)`` loads it offline.

    python scripts/export_pretrained.py gp2d gp2d --envelope-only

recomputes the envelope of a shipped model from its card's task and rewrites its card only
(the weights are copied unchanged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, experiment_from_checkpoint
from bsatnp.io.checkpoint import load_checkpoint
from bsatnp.predictor import Predictor
from bsatnp.pretrained import checkpoint_path
from bsatnp.reports import markdown_table
from bsatnp.tasks.base import task_envelope

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bsatnp" / "pretrained"


def main() -> None:
    """Evaluate the checkpoint, write the model with its card into the package."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("name")
    parser.add_argument("--batches", default="in_domain=500",
                        help="test batches per domain, DOMAIN=N,... (seed: the run's)")
    parser.add_argument("--summary", default="", help="one line for `bsatnp models`")
    parser.add_argument("--envelope-only", action="store_true",
                        help="recompute the card's envelope of a shipped model, nothing else")
    args = parser.parse_args()
    if args.envelope_only:
        refresh_envelope(args.checkpoint, args.name)
        return
    ckpt = load_checkpoint(args.checkpoint)
    experiment = experiment_from_checkpoint(ckpt)
    task = experiment.task
    model = ckpt.build_model().eval()
    counts = {d: int(n) for d, n in (item.split("=") for item in args.batches.split(","))}
    results = evaluate(model, tuple(counts), counts, experiment.eval.seed, task=task,
                       progress=False)
    print(markdown_table(results))
    metrics = {
        domain: {key: value for key, value in entry.items()
                 if key in ("model", "oracle", "gap", "vs_in_domain", "n_batches")}
        for domain, entry in results["domains"].items()}
    described = task.describe()
    card = {
        "summary": args.summary,
        "task": task.name,
        "training": {**(ckpt.train_config or {}), "steps_run": ckpt.step},
        "metrics": metrics,
        "evaluation": {"seed": experiment.eval.seed, "batches": counts,
                       "batch_size": described.get("batch_size")},
        "envelope": task_envelope(task, experiment.to_dict()["task"]),
        **({"classes": list(task.class_names)} if task.class_names else {}),
    }
    card["training"].pop("out_dir", None)
    check = evaluate(model, ("in_domain",), 3, experiment.eval.seed, task=task, progress=False,
                     with_oracle=False)
    card["check"] = {"in_domain_batches": 3,
                     "nll": check["domains"]["in_domain"]["model"]["nll"]["mean"]}
    PACKAGE.mkdir(exist_ok=True)
    path = Predictor(model, card=json.loads(json.dumps(card, default=str))).save(
        PACKAGE / f"{args.name}.safetensors")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def refresh_envelope(shipped: str, name: str) -> None:
    """Rewrite the card of shipped model ``shipped`` with a recomputed envelope."""
    predictor = Predictor.load(checkpoint_path(shipped))
    stored_task = predictor.card["envelope"]["task"]
    task = ExperimentConfig.from_dict({"task": stored_task}).task
    predictor.card["envelope"] = {**predictor.card["envelope"],
                                  **task_envelope(task, stored_task)}
    path = predictor.save(PACKAGE / f"{name}.safetensors")
    print(f"wrote {path}: envelope {json.dumps(predictor.card['envelope'])[:400]}")


if __name__ == "__main__":
    main()
