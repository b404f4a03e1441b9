"""Own-data prediction at scale: a lon/lat grid of N targets from M station observations.

Each size runs in a fresh subprocess (so its peak RSS is its own) through the high-level
API exactly as a user calls it: ``Predictor.condition(DataFrame)`` once, then
``Conditioned.predict(grid, interval=0.9)`` streaming the targets in chunks; the result is
an xarray Dataset in the units of the data (°C). Prints a table and writes JSON.

Usage (the docs' figure: 10,000 observations → a 1000 × 1000 grid, 1 thread):
    python benchmarks/predict_grid.py --observations 10000 --grid 100 316 1000 --threads 1
A quick check:
    python benchmarks/predict_grid.py --observations 500 --grid 50 100
Without ``--checkpoint`` the paper's 2D-GP model is built untrained (the cost does not
depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
from common import peak_rss_mb, run_meta, write_json


def one_run(args: argparse.Namespace) -> dict[str, float]:
    """Condition on ``args.observations`` stations, predict a ``side × side`` grid."""
    import pandas as pd

    from bsatnp.data.tables import grid
    from bsatnp.models import BSATNP
    from bsatnp.predictor import Predictor

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.observations
    obs = pd.DataFrame({"lon": rng.uniform(-5.0, 5.0, n), "lat": rng.uniform(45.0, 55.0, n)})
    obs["t2m"] = 10 + 4 * np.sin(obs["lon"] / 2) * np.cos(obs["lat"] / 3) + rng.normal(0, .5, n)
    predictor = (Predictor.load(args.checkpoint) if args.checkpoint
                 else Predictor(BSATNP().eval()))
    side = args.side
    targets = grid(lon=(-5.0, 5.0, side), lat=(45.0, 55.0, side))
    rss0 = peak_rss_mb()
    start = time.perf_counter()
    conditioned = predictor.condition(obs, values="t2m", space=("lon", "lat"), crs="lonlat",
                                      units="degC")
    encoded = time.perf_counter()
    out = conditioned.predict(targets, interval=0.9, chunk_size=args.chunk_size)
    done = time.perf_counter()
    assert out["mean"].shape == (side, side) and bool(np.isfinite(out["std"].values).all())
    return {"observations": n, "targets": side * side, "chunk_size": args.chunk_size,
            "condition_s": encoded - start, "predict_s": done - encoded,
            "wall_s": done - start, "rss_before_mib": rss0,
            "peak_rss_mib": peak_rss_mb(),
            "mean_degC": float(out["mean"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--grid", type=int, nargs="+", default=[100, 316, 1000],
                        help="grid sides to run (targets = side²)")
    parser.add_argument("--chunk-size", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="a Predictor checkpoint (default: untrained)")
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)  # one run (subprocess)
    parser.add_argument("--out", default="benchmarks/results/predict_grid.json")
    args = parser.parse_args()
    if args.side is not None:
        print(json.dumps(one_run(args)))
        return
    rows = []
    for side in args.grid:
        command = [sys.executable, __file__, "--side", str(side), "--observations",
                   str(args.observations), "--chunk-size", str(args.chunk_size), "--threads",
                   str(args.threads)] + (["--checkpoint", args.checkpoint] if args.checkpoint
                                         else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(done.stderr)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"| {row['observations']:,} | {row['targets']:,} | {row['condition_s']:.1f} | "
              f"{row['predict_s']:.1f} | {row['wall_s']:.1f} | {row['peak_rss_mib']:.0f} |",
              flush=True)
    write_json(args.out, {"meta": run_meta(args.threads), "runs": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
