"""Score a task's exact oracle on its reproducible test batches (SPEC §8 sanity check).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/oracle_check.py --n-batches 1000 --seed 0
    python benchmarks/oracle_check.py --task geodesic --domain rotated_60_30_20 --n-batches 50

Prints mean ± standard error over batches of every metric and writes them as JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import run_meta, write_json

from bsatnp.experiment import load_experiment
from bsatnp.metrics import gaussian_metrics, summarize
from bsatnp.tasks import batch_generator, task_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-batches", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=task_names(), default="gp2d",
                        help="task of the bundled config of that name")
    parser.add_argument("--domain", default="in_domain")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/oracle_check.json"))
    args = parser.parse_args()

    task = load_experiment(args.task).task.domain(args.domain)
    if not task.has_oracle:
        parser.error(f"task {args.task} has no oracle")
    start = time.perf_counter()
    results = []
    for index in range(args.n_batches):
        batch, pred = task.sample_with_oracle(batch_generator(args.seed, index))
        results.append(gaussian_metrics(pred.mean, pred.stddev, batch.f_test, batch.test_mask()))
    elapsed = time.perf_counter() - start
    summary = summarize(results)

    print(f"oracle, {args.task} {args.domain}, {args.n_batches} batches, seed {args.seed}")
    print(f"{'metric':<8} {'mean':>9} {'s.e.':>8}")
    for key, (mean, stderr) in summary.items():
        print(f"{key:<8} {mean:>9.4f} {stderr:>8.4f}")
    print(f"time {elapsed:.1f} s ({torch.get_num_threads()} threads)")

    record = {
        "domain": args.domain,
        "n_batches": args.n_batches,
        "seed": args.seed,
        "task": {k: str(v) for k, v in vars(task).items()},
        "metrics": {k: {"mean": m, "stderr": s} for k, (m, s) in summary.items()},
        "seconds": elapsed,
        **run_meta(),
    }
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
