"""Per-batch scores of the shipped gp2d, sir and geodesic models on their own tasks, to
show that a refactoring changed no number.

    PYTHONPATH=<tree>/src python benchmarks/result_batches.py scores_<tree>.json
    python benchmarks/result_batches.py --compare scores_before.json scores_after.json

The first form scores 8 result batches per domain (test seed 1000; gp2d in-domain and
shifted, sir and geodesic in-domain) through ``bsatnp.evaluate`` with its per-batch cache
and writes every batch's metrics; it runs on any commit whose ``evaluate`` has
``cache_dir``. The second prints the largest absolute difference per domain (the batches
and the model's weights must be the same).
"""

from __future__ import annotations

import argparse
import json
import tempfile

MODELS = (("gp2d", ("in_domain", "shifted")), ("sir", ("in_domain",)),
          ("geodesic", ("in_domain",)))


def score(out: str, n_batches: int) -> None:
    import torch

    from bsatnp.evaluate import evaluate
    from bsatnp.experiment import ExperimentConfig
    from bsatnp.io.checkpoint import load_model
    from bsatnp.pretrained import checkpoint_path, model_card

    torch.set_num_threads(1)
    scores = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, domains in MODELS:
            task = ExperimentConfig.from_dict({"task": model_card(name)["envelope"]["task"]}).task
            model = load_model(checkpoint_path(name)).eval()
            evaluate(model, domains=domains, n_batches=n_batches, seed=1000, progress=False,
                     task=task, cache_dir=f"{cache}/{name}")
            for domain in domains:
                with open(f"{cache}/{name}/{domain}/model.jsonl") as lines:
                    scores[f"{name}/{domain}"] = [json.loads(line) for line in lines
                                                  if line.strip()]
    with open(out, "w") as file:
        json.dump(scores, file)
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v) - 1} batches" for k, v in scores.items()))


def compare(before: str, after: str) -> None:
    with open(before) as a, open(after) as b:
        old, new = json.load(a), json.load(b)
    for key in old:
        if old[key][0]["header"] != new[key][0]["header"]:
            raise SystemExit(f"{key}: another task, seed or model; nothing to compare")
        pairs = list(zip(old[key][1:], new[key][1:]))
        if any(x["index"] != y["index"] for x, y in pairs):
            raise SystemExit(f"{key}: the batches differ")
        worst = max(abs(v - y["scores"]["model"][k]) for x, y in pairs
                    for k, v in x["scores"]["model"].items())
        print(f"{key}: {len(pairs)} batches, max |Δ| over every metric = {worst:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="output JSON, or two files with --compare")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    if args.compare:
        compare(*args.files)
    else:
        score(args.files[0], args.batches)


if __name__ == "__main__":
    main()
