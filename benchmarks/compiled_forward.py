"""A shipped model's forward with its bias profiles eager against compiled, side by side.

Loads a shipped model (``--model``, default ``gp2d``) and times its inference forward on the
batch ``benchmarks/forward.py`` uses at each size, alternating ``BSATNP_COMPILE=0`` (eager
profiles) and ``=1`` (compiled from the first large tile, no warm-up) in one process, after
one untimed call each (the compiled one compiles there). Prints medians and the ratio.

Usage:
    python benchmarks/compiled_forward.py --sizes 512x1024,2048x4096 --threads 2 \
        --out benchmarks/results/compiled_forward.json
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from common import run_meta, timed, write_json
from forward import case_batch

from bsatnp import Batch
from bsatnp.io.checkpoint import load_model
from bsatnp.pretrained import pretrained_path

MODES = {"eager": "0", "compiled": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gp2d", help="a shipped model (bsatnp models)")
    parser.add_argument("--sizes", default="512x1024,2048x4096", help="CTXxTEST, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/compiled_forward.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(pretrained_path(args.model))
    rows = []
    print("| case | eager s | compiled s | eager / compiled |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        batch = case_batch(size, dim_f=model.config.dim_f)

        def run(mode: str, batch: Batch = batch) -> None:
            os.environ["BSATNP_COMPILE"] = MODES[mode]
            with torch.no_grad():
                model(batch)

        first = {mode: timed(lambda mode=mode: run(mode)) for mode in MODES}
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                times[mode].append(timed(lambda mode=mode: run(mode)))
        med = {mode: statistics.median(t) for mode, t in times.items()}
        rows.append({"case": size, "first_call_s": first, "seconds": times, "median_s": med,
                     "ratio": med["eager"] / med["compiled"]})
        print(f"| {size} | {med['eager']:.3f} | {med['compiled']:.3f} | "
              f"{med['eager'] / med['compiled']:.2f}× |", flush=True)
    write_json(args.out, {"meta": run_meta(args.threads, model=args.model), "rows": rows})


if __name__ == "__main__":
    main()
