"""Forward and training-step benchmark of the BSA-TNP per attention backend.

Every (case, backend) runs in its own subprocess so that peak RSS is that case's own.
Forward: B=1, median of ``--repeats`` timed runs after a warm-up forward (at 512/1024, so
the largest sizes do not pay for a full-size warm-up). Training step: forward + backward +
AdamW at B=8, 512 context slots (128–511 valid), 1024 test points.

Usage:
    python benchmarks/forward.py                       # everything, table + JSON
    python benchmarks/forward.py --sizes 2048x4096 --backends tiled --no-train
    python benchmarks/forward.py --sizes "" --backends tiled,tiled-recompute   # train step only
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bsatnp.attention.tiled as tiled
from bsatnp import Batch
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP

DEFAULT_SIZES = ("512x1024", "2048x4096", "8192x16384", "16384x65536")
REFERENCE_SECONDS = {  # dl4bi 0.1.3 on JAX, 2-core CPU (SPEC §9)
    "512x1024": 0.336, "2048x4096": 5.09, "8192x16384": 82.2, "16384x65536": 557.7,
    "train": 5.35,
}
RECOMPUTE = "tiled-recompute"
"""Pseudo-backend: ``tiled`` with :data:`bsatnp.attention.tiled.KEEP_ELEMENTS` = 0."""
DENSE_MAX_BYTES = 8e9  # dense materialises B·H·Lq·Lk scores several times: skip beyond this


def gp_like_batch(B: int, n_ctx: int, n_test: int, min_valid: int | None, seed: int = 0) -> Batch:
    """Random 2D-GP-shaped batch on [−2, 2]²; ``min_valid`` draws per-task valid counts."""
    g = torch.Generator().manual_seed(seed)
    mask = None
    if min_valid is not None:
        valid = torch.randint(min_valid, n_ctx, (B, 1), generator=g)
        mask = torch.arange(n_ctx)[None] < valid
    return Batch(
        s_ctx=4 * torch.rand(B, n_ctx, 2, generator=g) - 2,
        f_ctx=torch.randn(B, n_ctx, 1, generator=g),
        mask_ctx=mask,
        s_test=4 * torch.rand(B, n_test, 2, generator=g) - 2,
        f_test=torch.randn(B, n_test, 1, generator=g),
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_forward(size: str, backend: str, repeats: int) -> dict:
    n_ctx, n_test = map(int, size.split("x"))
    model = BSATNP(backend=backend).eval()
    with torch.no_grad():
        model(gp_like_batch(1, 512, 1024, None))  # warm-up
        rss_before = peak_rss_mb()
        batch = gp_like_batch(1, n_ctx, n_test, None)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    pairs = model.config.num_blocks * (n_ctx * n_ctx + n_test * n_ctx)
    return {
        "case": size, "backend": backend, "seconds": median, "times": times,
        "ns_per_pair_block": median / pairs * 1e9, "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


def run_train(backend: str, repeats: int) -> dict:
    model = BSATNP(backend=backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    times = []
    batch = gp_like_batch(8, 512, 1024, 128)  # one batch: steps differ only by the weights
    for step in range(repeats + 1):  # the first step is the warm-up
        start = time.perf_counter()
        loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return {"case": "train", "backend": backend, "seconds": statistics.median(times),
            "times": times, "peak_rss_mb": peak_rss_mb()}


def dense_fits(size: str) -> bool:
    n_ctx, n_test = map(int, size.split("x"))
    return 4 * (n_ctx + n_test) * n_ctx * 4 * 6 <= DENSE_MAX_BYTES


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    backend = args.backend
    if backend == RECOMPUTE:  # the tiled scan without kept tiles: backward recomputes
        tiled.KEEP_ELEMENTS = 0
        backend = "tiled"
    if args.case == "train":
        result = run_train(backend, args.repeats)
    else:
        result = run_forward(args.case, backend, args.repeats)
    result["backend"] = args.backend
    print(json.dumps(result))


def spawn(case: str, backend: str, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--backend", backend,
           "--repeats", str(repeats), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"case": case, "backend": backend, "error": proc.stderr.strip()[-400:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| case | backend | median s | ns/pair/block | peak RSS MB | reference s | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        ref = REFERENCE_SECONDS.get(r["case"])
        if "error" in r or "skipped" in r:
            note = r.get("skipped") or "failed: " + r["error"].splitlines()[-1]
            lines.append(f"| {r['case']} | {r['backend']} | {note} | | | {ref or ''} | |")
            continue
        ns = f"{r['ns_per_pair_block']:.1f}" if "ns_per_pair_block" in r else ""
        speed = f"{ref / r['seconds']:.1f}×" if ref else ""
        lines.append(
            f"| {r['case']} | {r['backend']} | {r['seconds']:.3f} | {ns} | "
            f"{r['peak_rss_mb']:.0f} | {ref or ''} | {speed} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="comma-separated CTXxTEST forward cases")
    parser.add_argument("--backends", default="tiled,dense,auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--out", default="benchmarks/results/forward.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.case = args.child
        child(args)
        return
    cases = [s for s in args.sizes.split(",") if s]
    if not args.no_train:
        cases.append("train")
    results = []
    for case in cases:
        for backend in args.backends.split(","):
            if backend == "dense" and case != "train" and not dense_fits(case):
                results.append({"case": case, "backend": backend,
                                 "skipped": "skipped: dense scores would exceed 8 GB"})
                continue
            result = spawn(case, backend, args.repeats, args.threads)
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "threads": args.threads,
            "command": " ".join(["python", *sys.argv])}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
