"""Far tiles skipped against all tiles biased, side by side in one run (tiled backend).

One biased self-attention over ``--n`` points scattered on a ``--side`` × ``--side`` square
(the SIR scaling run: 100,000 cells on 64 × 64 units), with the first TISA bias of a trained
model (``--checkpoint``; reach printed) or a TISA bias of rate ``--rate``. Rows, timed
alternately: ``BSATNP_FAR_TILES=0`` (every tile biased, default tiles), ``=1`` (points in
Z-order, bias skipped where the tiles are beyond the reach, 512 × 512 tiles) and no bias at
all (the floor of the same attention). Also the share of tiles skipped and the largest
difference between the two biased outputs.

Usage:
    python benchmarks/far_tiles.py --checkpoint runs/sir/bsatnp/last.safetensors \
        --n 20000 --side 28.6 --threads 2 --out benchmarks/results/far_tiles.json
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from common import peak_rss_mb, run_meta, timed, trained_bias, write_json

from bsatnp.attention import locality
from bsatnp.attention.biases import AttentionBias, BiasSpec
from bsatnp.attention.tiled import FAR_TILE, tiled_attention


def make_bias(checkpoint: str | None, rate: float, heads: int) -> AttentionBias:
    """A one-term TISA bias: a trained model's first, or constant init with rate ``rate``."""
    if checkpoint is not None:
        return trained_bias(checkpoint, "tisa")
    bias = AttentionBias((BiasSpec(role="s", family="tisa"),), heads)
    with torch.no_grad():
        bias.terms[0].b.fill_(rate)
    return bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="points (queries = keys)")
    parser.add_argument("--side", type=float, default=28.6, help="side of the square")
    parser.add_argument("--checkpoint", help="take the TISA bias of this trained model")
    parser.add_argument("--rate", type=float, default=1.0, help="TISA rate without a model")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/far_tiles.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bias = make_bias(args.checkpoint, args.rate, args.heads)
    H, D, n = bias.num_heads, args.head_dim, args.n
    s = {"s": torch.rand(1, n, 2, dtype=torch.float64).mul(args.side).float()}
    q, k, v = (torch.randn(1, H, n, D) for _ in range(3))

    outputs: dict[str, torch.Tensor] = {}

    def run(name: str) -> None:
        os.environ["BSATNP_FAR_TILES"] = "1" if name == "far tiles skipped" else "0"
        with torch.no_grad():
            outputs[name] = tiled_attention(q, k, v, None if name == "no bias" else bias,
                                            s, s, None, D**-0.5)

    names = ("all tiles biased", "far tiles skipped", "no bias")
    run(names[0])  # compiles the TISA profile: not timed
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(timed(lambda name=name: run(name)))
    reaches = bias.reaches()
    assert reaches is not None
    in_order = {"s": locality.gather_rows(s["s"], locality.morton_order(s["s"]), 1)}
    far = locality.FarTiles(reaches, in_order, in_order, FAR_TILE, FAR_TILE)
    starts = range(0, n, FAR_TILE)
    skipped_share = sum(far.far(i, j) for i in starts for j in starts) / len(starts) ** 2
    diff = float((outputs["far tiles skipped"] - outputs["all tiles biased"]).abs().max())
    reach = reaches["s"][1]
    rows = []
    print(f"{n:,} points on {args.side}², reach {reach}, {args.threads} threads; "
          f"tiles skipped {skipped_share:.1%}; largest difference {diff:.2e}")
    print(f"| {'path':<18} | median s | ns per pair |")
    for name in names:
        sec = statistics.median(times[name])
        rows.append({"path": name, "seconds": times[name], "median_s": sec,
                     "ns_per_pair": sec / n / n * 1e9})
        print(f"| {name:<18} | {sec:8.2f} | {sec / n / n * 1e9:11.1f} |")
    write_json(args.out, {
        "meta": run_meta(args.threads, n=n, side=args.side, checkpoint=args.checkpoint,
                         reach=reach, heads=H, head_dim=D),
        "tiles_skipped_share": skipped_share, "max_abs_difference": diff,
        "peak_rss_mb": peak_rss_mb(), "rows": rows,
    })


if __name__ == "__main__":
    main()
