"""Score the exact-GP oracle on reproducible 2D-GP batches (SPEC §8 sanity check).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/oracle_check.py --n-batches 1000 --seed 0

Prints mean ± standard error over batches of every metric and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bsatnp.baselines.gp_oracle import gp_posterior
from bsatnp.metrics import gaussian_metrics, summarize
from bsatnp.tasks.gp2d import eval_batches, in_domain, scaled, shifted

DOMAINS = {"in_domain": in_domain, "shifted": shifted, "scaled": scaled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-batches", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="in_domain")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/oracle_check.json"))
    args = parser.parse_args()

    task = DOMAINS[args.domain]()
    start = time.perf_counter()
    results = []
    for batch, params in eval_batches(task, args.n_batches, args.seed):
        pred = gp_posterior(batch, params)
        results.append(gaussian_metrics(pred.mean, pred.stddev, batch.f_test, batch.test_mask()))
    elapsed = time.perf_counter() - start
    summary = summarize(results)

    print(f"GP oracle, 2D GP {args.domain}, {args.n_batches} batches, seed {args.seed}")
    print(f"{'metric':<8} {'mean':>9} {'s.e.':>8}")
    for key, (mean, stderr) in summary.items():
        print(f"{key:<8} {mean:>9.4f} {stderr:>8.4f}")
    print(f"time {elapsed:.1f} s ({torch.get_num_threads()} threads)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "domain": args.domain,
        "n_batches": args.n_batches,
        "seed": args.seed,
        "task": {k: str(v) for k, v in vars(task).items()},
        "metrics": {k: {"mean": m, "stderr": s} for k, (m, s) in summary.items()},
        "seconds": elapsed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
