"""Reliability diagram of exceedance probabilities from a league-table JSON.

    python benchmarks/plot_reliability.py \\
        benchmarks/results/real_data_beijing_spatial_exceedance75.json \\
        docs/results/real_data/beijing_exceedance75.png

Reads the ``exceedance`` records ``benchmarks/real_data.py --threshold`` writes and draws,
per method, the observed frequency against the mean forecast probability of each bin
(points sized by count), with the diagonal of perfect calibration; the legend gives each
method's Brier score.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("out")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.results) as file:
        data = json.load(file)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    threshold = None
    for name, result in data["results"].items():
        ex = result.get("exceedance")
        if ex is None:
            continue
        threshold = ex["threshold"]
        bins = [b for b in ex["reliability"] if b["n"]]
        ax.plot([b["forecast"] for b in bins], [b["observed"] for b in bins], marker="o",
                ms=3, lw=1, label=f"{name} (Brier {ex['brier']:.4f})")
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"P(value > {threshold:g}), {data['meta']['dataset']}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
