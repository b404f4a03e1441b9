"""Local conditioning at scale: wall time and peak RSS against the numbers of points.

    python benchmarks/local_scaling.py --sizes 10000x10000,100000x100000,1000000x1000000

Each size ``NxM`` predicts ``M`` targets on a grid from ``N`` scattered observations of a
smooth synthetic field with the shipped ``gp2d`` and ``neighbours=512``, in its own forked
process (so each peak RSS is that size's alone). Writes
``benchmarks/results/local_scaling.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from common import run_forked, run_meta, write_json


def field(xy: np.ndarray) -> np.ndarray:
    return np.sin(xy[:, 0] / 7) + np.cos(xy[:, 1] / 11) + 0.5 * np.sin((xy[:, 0] + xy[:, 1]) / 3)


def run(n_obs: int, n_targets: int, neighbours: int, threads: int) -> dict:
    import pandas as pd
    import torch

    from bsatnp import Predictor

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    side = 100.0 * math.sqrt(n_obs / 1e4)  # the density of the data stays the same
    xy = rng.uniform(0, side, (n_obs, 2))
    obs = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1],
                        "v": field(xy) + 0.1 * rng.standard_normal(n_obs)})
    g = int(math.isqrt(n_targets))
    axis = np.linspace(0, side, g)
    gx, gy = np.meshgrid(axis, axis)
    targets = pd.DataFrame({"x": gx.ravel(), "y": gy.ravel()})
    predictor = Predictor.from_pretrained("gp2d")
    start = time.perf_counter()
    out = predictor.predict(obs, targets, values="v", space=("x", "y"), neighbours=neighbours)
    seconds = time.perf_counter() - start
    truth = field(targets.to_numpy())
    rmse = float(np.sqrt(np.mean((out["mean"].to_numpy() - truth) ** 2)))
    return {"n_obs": n_obs, "n_targets": len(targets), "seconds": seconds, "rmse": rmse}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000x10000,100000x100000,1000000x1000000")
    parser.add_argument("--neighbours", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"
                                             / "local_scaling.json"))
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        n_obs, n_targets = (int(v) for v in size.split("x"))
        row, rss = run_forked(size, run, n_obs, n_targets, args.neighbours, args.threads)
        row["peak_rss_mb"] = rss
        rows.append(row)
        print(f"{row['n_obs']:>9,} obs  {row['n_targets']:>9,} targets  {row['seconds']:8.1f} s"
              f"  {row['peak_rss_mb']:7.0f} MiB  RMSE {row['rmse']:.3f}", flush=True)
    write_json(args.out, {"meta": run_meta(threads=args.threads, neighbours=args.neighbours),
                          "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
