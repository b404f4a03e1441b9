"""Peak RSS of ``bsatnp predict --grid ... --max-memory`` against its bound (issue 28).

    python benchmarks/cli_memory.py --side 3163 --max-memory 600MB

Writes ``--observations`` random stations (a smooth field) to a temp CSV, runs the CLI as
a child process predicting a ``side × side`` grid into netCDF under ``--max-memory``, and
records the child's wall time and peak RSS (``getrusage(RUSAGE_CHILDREN)``) in
``benchmarks/results/cli_memory.json``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import run_meta, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=3163, help="grid points per axis")
    parser.add_argument("--observations", type=int, default=400)
    parser.add_argument("--model", default="gp2d")
    parser.add_argument("--max-memory", default="600MB")
    parser.add_argument("--out", default="benchmarks/results/cli_memory.json")
    args = parser.parse_args()
    import pandas as pd

    from bsatnp.options import parse_bytes

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        stations = Path(folder) / "obs.csv"
        lon, lat = rng.uniform(5, 9, args.observations), rng.uniform(45, 48, args.observations)
        pd.DataFrame({"lon": lon, "lat": lat, "t2m": np.sin(lon) + np.cos(2 * lat)}).to_csv(
            stations, index=False)
        command = [sys.executable, "-m", "bsatnp", "predict", "--quiet", "--model", args.model,
                   "--observations", str(stations), "--values", "t2m", "--space", "lon", "lat",
                   "--crs", "lonlat", "--grid", f"lon=5:9:{args.side},lat=45:48:{args.side}",
                   "--max-memory", args.max_memory, "--output", str(Path(folder) / "out.nc")]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        size = (Path(folder) / "out.nc").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    bound = parse_bytes(args.max_memory)
    record = {"meta": run_meta(**vars(args)), "targets": args.side**2, "seconds": seconds,
              "peak_rss_bytes": peak, "bound_bytes": bound, "within_bound": peak <= bound,
              "output_bytes": size}
    print(f"{args.side**2:,} targets: {seconds:.0f} s, peak RSS {peak / 1e6:.0f} MB "
          f"(bound {bound / 1e6:.0f} MB), netCDF {size / 1e6:.0f} MB")
    write_json(args.out, record)


if __name__ == "__main__":
    main()
