"""Speed of the SIR lattice simulator (PROTOCOLS §5): simulations per second by lattice size.

Usage:
    python benchmarks/sir_simulator.py                  # 64² (25 frames) and 1024² (200 frames)
    python benchmarks/sir_simulator.py --threads 1 --rounds 5

Prints a table and writes ``benchmarks/results/sir_simulator.json``. Each row simulates
``batch`` epidemics at once (parameters, initial state and every transition), after one
warm-up call, and reports the median of ``--rounds`` timed calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import run_meta, write_json

from bsatnp.tasks.sir import SIRSimulator

CASES = ((64, 25, 64), (128, 50, 16), (1024, 200, 1))
"""(side, frames, epidemics per call): the training lattice, the scaled one, the scaling run."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/sir_simulator.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for side, frames, batch in CASES:
        sim = SIRSimulator(height=side, width=side, n_frames=frames)
        generator = torch.Generator().manual_seed(0)
        sim.simulate(batch, generator)  # warm-up
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            sim.simulate(batch, generator)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"side": side, "frames": frames, "batch": batch, "seconds": seconds,
                     "simulations_per_s": batch / seconds,
                     "cell_steps_per_s": batch * side * side * (frames - 1) / seconds})
    print("| lattice | frames | epidemics/call | s/call | simulations/s | cell-steps/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']}² | {r['frames']} | {r['batch']} | {r['seconds']:.3f} | "
              f"{r['simulations_per_s']:.2f} | {r['cell_steps_per_s']:.3g} |")
    out = write_json(args.out, {"meta": run_meta(args.threads, rounds=args.rounds),
                                "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
