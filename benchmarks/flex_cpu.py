"""Compiled flex_attention on the CPU against the tiled scan, side by side in one run.

One biased attention (inference, B = 1) of ``Lq`` queries over ``Lk`` keys, both uniform on
a square of side ``--side``, with the RBF bias of a trained model (``--checkpoint``; the
shipped ``gp2d`` by default). Rows, timed alternately after one untimed call each: compiled
flex (the first call, which compiles, is reported apart), the tiled scan as ``auto`` runs
it, and the tiled scan with far tiles off (``BSATNP_FAR_TILES=0``). Also the largest
difference between flex and tiled outputs and the peak RSS of the process.

Usage:
    python benchmarks/flex_cpu.py --cases 4096x16384,16384x65536 --threads 2 \
        --out benchmarks/results/flex_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from common import peak_rss_mb, run_meta, timed, trained_bias, write_json

from bsatnp.attention.biases import AttentionBias
from bsatnp.attention.flex import flex_attention_biased
from bsatnp.attention.tiled import tiled_attention
from bsatnp.pretrained import pretrained_path


def run_case(bias: AttentionBias, Lk: int, Lq: int, side: float, rounds: int,
             head_dim: int) -> dict:
    """Time the three paths on one problem; returns the case's record."""
    torch.manual_seed(0)
    H, D = bias.num_heads, head_dim
    role = bias.terms[0].spec.role
    dim = 2 if role == "s" else 1
    cq = {role: (torch.rand(1, Lq, dim) - 0.5) * side}
    ck = {role: (torch.rand(1, Lk, dim) - 0.5) * side}
    q, k, v = torch.randn(1, H, Lq, D), torch.randn(1, H, Lk, D), torch.randn(1, H, Lk, D)
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str) -> None:
        os.environ["BSATNP_FAR_TILES"] = "0" if name == "tiled, far tiles off" else "1"
        with torch.no_grad():
            if name == "flex compiled":
                outputs[name] = flex_attention_biased(q, k, v, bias, cq, ck, None, D**-0.5,
                                                      compile=True)
            else:
                outputs[name] = tiled_attention(q, k, v, bias, cq, ck, None, D**-0.5)

    names = ("flex compiled", "tiled", "tiled, far tiles off")
    first = {name: timed(lambda name=name: run(name)) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            times[name].append(timed(lambda name=name: run(name)))
    diff = float((outputs["flex compiled"] - outputs["tiled"]).abs().max())
    rows = [{"path": name, "first_call_s": first[name], "seconds": times[name],
             "median_s": statistics.median(times[name]),
             "ns_per_pair_head": statistics.median(times[name]) / (Lq * Lk * H) * 1e9}
            for name in names]
    return {"case": f"{Lk}x{Lq}", "keys": Lk, "queries": Lq, "max_abs_difference": diff,
            "rows": rows, "peak_rss_mb_so_far": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="4096x16384,16384x65536",
                        help="comma-separated KEYSxQUERIES")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped gp2d model")
    parser.add_argument("--side", type=float, default=4.0, help="side of the square")
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/flex_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(pretrained_path("gp2d"))
    bias = trained_bias(checkpoint)
    cases = []
    print(f"| {'case':<12} | {'path':<20} | first call s | median s | ns/pair/head |")
    for case in args.cases.split(","):
        Lk, Lq = (int(x) for x in case.split("x"))
        record = run_case(bias, Lk, Lq, args.side, args.rounds, args.head_dim)
        cases.append(record)
        for row in record["rows"]:
            print(f"| {case:<12} | {row['path']:<20} | {row['first_call_s']:12.2f} | "
                  f"{row['median_s']:8.2f} | {row['ns_per_pair_head']:12.2f} |", flush=True)
        print(f"  largest |flex − tiled| {record['max_abs_difference']:.2e}", flush=True)
    write_json(args.out, {
        "meta": run_meta(args.threads, checkpoint=checkpoint, side=args.side,
                         heads=bias.num_heads, head_dim=args.head_dim),
        "cases": cases, "peak_rss_mb": peak_rss_mb(),
    })


if __name__ == "__main__":
    main()
