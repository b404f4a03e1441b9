"""Forward and training-step benchmark of the BSA-TNP per attention backend.

Every (case, backend) runs in its own subprocess so that peak RSS is that case's own.
Forward: B=1, median of ``--repeats`` timed runs after a warm-up forward (at 512/1024, so
the largest sizes do not pay for a full-size warm-up). Training step: forward + backward +
AdamW at B=8, 512 context slots (128–511 valid), 1024 test points, at each
``--train-precision`` (``fp32``, ``bf16``: :func:`bsatnp.precision.training_precision`, as
the trainer runs it); a bf16 row is labelled ``BACKEND/bf16``.

Side by side with the reference JAX package (``--reference-python`` = the python of a separate
environment with ``dl4bi`` 0.1.3 and JAX, e.g. ``python -m venv refenv && refenv/bin/pip install
dl4bi==0.1.3 jax``): per case, ``--rounds`` rounds alternate ours then the reference
(``benchmarks/reference_runner.py``, same inputs, same model configuration, float32), each in its
own subprocess confined to the same ``--threads`` CPUs; each side's time is the median of its
rounds, warm-up at the case's own size (the reference's JIT compile and first run, our
first run) reported apart.
Default cases there: forward 512x1024 and 2048x4096 and the training step; backend ``auto``.

Usage:
    python benchmarks/forward.py                       # everything, table + JSON
    python benchmarks/forward.py --sizes 2048x4096 --backends tiled --no-train
    python benchmarks/forward.py --sizes "" --backends tiled,tiled-recompute   # train step only
    python benchmarks/forward.py --reference-python /work/refenv/bin/python --threads 2 \
        --train-precision fp32,bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import peak_rss_mb, run_meta, write_json

import bsatnp.attention.tiled as tiled
from bsatnp import Batch
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP
from bsatnp.precision import TRAINING_PRECISIONS, training_precision

DEFAULT_SIZES = ("512x1024", "2048x4096", "8192x16384", "16384x65536")
SIDE_BY_SIDE_SIZES = ("512x1024", "2048x4096")  # default cases with --reference-python
REFERENCE_RUNNER = Path(__file__).with_name("reference_runner.py")
REFERENCE_SECONDS = {  # dl4bi 0.1.3 on JAX, 2-core CPU (SPEC §9)
    "512x1024": 0.336, "2048x4096": 5.09, "8192x16384": 82.2, "16384x65536": 557.7,
    "train": 5.35,
}
RECOMPUTE = "tiled-recompute"
"""Pseudo-backend: ``tiled`` with :data:`bsatnp.attention.tiled.KEEP_ELEMENTS` = 0."""
DENSE_MAX_BYTES = 8e9  # dense materialises B·H·Lq·Lk scores several times: skip beyond this


def gp_like_batch(B: int, n_ctx: int, n_test: int, min_valid: int | None, seed: int = 0,
                  dim_f: int = 1) -> Batch:
    """Random 2D-GP-shaped batch on [−2, 2]²; ``min_valid`` draws per-task valid counts;
    ``dim_f`` value features (1 for the GP; e.g. 3 for the SIR model's one-hot states)."""
    g = torch.Generator().manual_seed(seed)
    mask = None
    if min_valid is not None:
        valid = torch.randint(min_valid, n_ctx, (B, 1), generator=g)
        mask = torch.arange(n_ctx)[None] < valid
    return Batch(
        s_ctx=4 * torch.rand(B, n_ctx, 2, generator=g) - 2,
        f_ctx=torch.randn(B, n_ctx, dim_f, generator=g),
        mask_ctx=mask,
        s_test=4 * torch.rand(B, n_test, 2, generator=g) - 2,
        f_test=torch.randn(B, n_test, dim_f, generator=g),
    )


def case_batch(case: str, dim_f: int = 1) -> Batch:
    """The batch a case runs on (the same for ours and the reference)."""
    if case == "train":
        return gp_like_batch(8, 512, 1024, 128, dim_f=dim_f)
    n_ctx, n_test = map(int, case.split("x"))
    return gp_like_batch(1, n_ctx, n_test, None, dim_f=dim_f)


def limit_cpus(threads: int) -> list[int]:
    """Confine this process to its first ``threads`` allowed CPUs (as the reference runner)."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    for tid in os.listdir("/proc/self/task"):  # also threads started before now (torch has one)
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended since
            os.sched_setaffinity(int(tid), cpus)
    return cpus


def run_forward(size: str, backend: str, repeats: int, full_warmup: bool = False) -> dict:
    model = BSATNP(backend=backend).eval()
    batch = case_batch(size)
    with torch.no_grad():
        start = time.perf_counter()
        model(batch if full_warmup else gp_like_batch(1, 512, 1024, None))  # warm-up
        warmup = time.perf_counter() - start
        rss_before = peak_rss_mb()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    pairs = model.config.num_blocks * pair_count(size)
    result = {
        "case": size, "backend": backend, "seconds": median, "times": times,
        "ns_per_pair_block": median / pairs * 1e9, "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }
    if full_warmup:
        result["warmup_s"] = warmup
    return result


def pair_count(size: str) -> int:
    """(query, key) pairs per block of a forward case: context self-attention + test→context."""
    n_ctx, n_test = map(int, size.split("x"))
    return n_ctx * n_ctx + n_test * n_ctx


def run_train(backend: str, repeats: int, precision: str = "fp32") -> dict:
    model = BSATNP(backend=backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    times = []
    batch = case_batch("train")  # one batch: steps differ only by the weights
    for step in range(repeats + 1):  # the first step is the warm-up
        start = time.perf_counter()
        with training_precision(precision, "cpu"):
            output = model(batch)
        loss = masked_nll(output, batch.f_test, batch.test_mask())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
        else:
            warmup = time.perf_counter() - start
    return {"case": "train", "backend": backend, "seconds": statistics.median(times),
            "times": times, "peak_rss_mb": peak_rss_mb(), "warmup_s": warmup}


def case_backends(case: str, backends: list[str], precisions: list[str]) -> list[str]:
    """What a case runs: each backend; the training step at each precision (``BACKEND/bf16``)."""
    if case != "train":
        return backends
    return [b if p == "fp32" else f"{b}/{p}" for b in backends for p in precisions]


def dense_fits(size: str) -> bool:
    n_ctx, n_test = map(int, size.split("x"))
    return 4 * (n_ctx + n_test) * n_ctx * 4 * 6 <= DENSE_MAX_BYTES


def child(args: argparse.Namespace) -> None:
    cpus = limit_cpus(args.threads) if args.side_by_side else None
    torch.set_num_threads(args.threads)
    backend, _, precision = args.backend.partition("/")
    if backend == RECOMPUTE:  # the tiled scan without kept tiles: backward recomputes
        tiled.KEEP_ELEMENTS = 0
        backend = "tiled"
    if args.case == "train":
        result = run_train(backend, args.repeats, precision or "fp32")
    else:
        result = run_forward(args.case, backend, args.repeats, full_warmup=args.side_by_side)
    result["backend"] = args.backend
    if cpus is not None:
        result["cpus"] = cpus
    print(json.dumps(result))


def spawn(case: str, backend: str, repeats: int, threads: int,
          side_by_side: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--backend", backend,
           "--repeats", str(repeats), "--threads", str(threads)]
    if side_by_side:
        cmd.append("--side-by-side")
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


class ReferenceUnavailable(RuntimeError):
    """The ``--reference-python`` interpreter is missing or cannot import dl4bi and JAX."""


def reference_versions(python: str) -> dict:
    """Versions of dl4bi, jax, jaxlib, flax, optax, numpy under ``python``.

    Raises:
        ReferenceUnavailable: If ``python`` is not an executable file or dl4bi/JAX do not
            import there.
    """
    path = Path(python)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ReferenceUnavailable(f"--reference-python {python}: no executable file there")
    proc = subprocess.run([python, str(REFERENCE_RUNNER), "--versions"], capture_output=True,
                          text=True, env=reference_env())
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no error output)"])[-1]
        raise ReferenceUnavailable(
            f"--reference-python {python}: cannot import dl4bi and JAX there ({last}); "
            "create a separate environment: python -m venv ENV && "
            "ENV/bin/pip install dl4bi==0.1.3 jax"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_env() -> dict:
    """Our environment without variables that would mix our packages into the reference's."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def write_inputs(case: str, folder: str) -> str:
    """Save the case's batch as .npz for the reference runner (same inputs on both sides)."""
    import numpy as np

    batch = case_batch(case)
    arrays = {k: getattr(batch, k).numpy() for k in ("s_ctx", "f_ctx", "s_test", "f_test")}
    if batch.mask_ctx is not None:
        arrays["mask_ctx"] = batch.mask_ctx.numpy()
    path = str(Path(folder) / f"{case}.npz")
    np.savez(path, **arrays)
    return path


def spawn_reference(python: str, case: str, repeats: int, threads: int, inputs: str) -> dict:
    cmd = [python, str(REFERENCE_RUNNER), "--case", case, "--repeats", str(repeats),
           "--threads", str(threads), "--inputs", inputs]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=reference_env())
    if proc.returncode != 0:
        return {"case": case, "backend": "dl4bi", "error": proc.stderr.strip()[-400:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if case != "train":
        result["ns_per_pair_block"] = result["seconds"] / (6 * pair_count(case)) * 1e9
    return result


def merge_rounds(rounds: list[dict]) -> dict:
    """One entry per (case, side): median seconds over the rounds, the largest peak RSS."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    merged = dict(ok[0])
    merged["seconds"] = statistics.median(r["seconds"] for r in ok)
    merged["round_seconds"] = [r["seconds"] for r in ok]
    merged["times"] = [t for r in ok for t in r["times"]]
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    for key in ("warmup_s", "compile_s", "first_run_s"):
        if key in merged:
            merged[key] = statistics.median(r[key] for r in ok)
    if "ns_per_pair_block" in merged:
        merged["ns_per_pair_block"] *= merged["seconds"] / ok[0]["seconds"]
    if len(ok) < len(rounds):
        merged["failed_rounds"] = [r["error"] for r in rounds if "error" in r]
    return merged


def compare(ours: dict, ref: dict) -> dict:
    row = {"case": ours["case"], "backend": ours["backend"]}
    for side, r in (("ours", ours), ("reference", ref)):
        if "error" in r or "skipped" in r:
            row[f"{side}_error"] = r.get("skipped") or r["error"].splitlines()[-1]
            continue
        row[f"{side}_s"] = r["seconds"]
        row[f"{side}_peak_rss_mb"] = r["peak_rss_mb"]
    row["ours_warmup_s"] = ours.get("warmup_s")
    row["reference_compile_s"] = ref.get("compile_s")
    row["reference_first_run_s"] = ref.get("first_run_s")
    if "ours_s" in row and "reference_s" in row:
        row["ratio"] = row["reference_s"] / row["ours_s"]
    return row


def comparison_table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    lines = ["| case | backend | ours s | reference s | ratio (reference / ours) | "
             "ours peak RSS MB | reference peak RSS MB | ours warm-up s | "
             "reference compile s | reference first run s | SPEC §9 reference s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = fmt(r.get("ours_s"), ".3f") or "failed: " + r.get("ours_error", "")
        ref = fmt(r.get("reference_s"), ".3f") or "failed: " + r.get("reference_error", "")
        ratio = f"{r['ratio']:.2f}×" if "ratio" in r else ""
        lines.append(
            f"| {r['case']} | {r['backend']} | {ours} | {ref} | {ratio} | "
            f"{fmt(r.get('ours_peak_rss_mb'), '.0f')} | "
            f"{fmt(r.get('reference_peak_rss_mb'), '.0f')} | "
            f"{fmt(r.get('ours_warmup_s'), '.2f')} | {fmt(r.get('reference_compile_s'), '.2f')} | "
            f"{fmt(r.get('reference_first_run_s'), '.2f')} | "
            f"{REFERENCE_SECONDS.get(r['case'], '')} |"
        )
    return "\n".join(lines)


def side_by_side(args: argparse.Namespace, cases: list[str], backends: list[str]) -> dict:
    """Rounds alternate ours (each backend) then the reference, per case."""
    results, reference_results, rows = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            inputs = write_inputs(case, folder)
            variants = case_backends(case, backends, args.train_precision)
            ours_rounds: dict[str, list[dict]] = {b: [] for b in variants}
            ref_rounds: list[dict] = []
            for n in range(args.rounds):
                for backend in variants:
                    if backend == "dense" and case != "train" and not dense_fits(case):
                        ours_rounds[backend].append(
                            {"case": case, "backend": backend,
                             "skipped": "skipped: dense scores would exceed 8 GB"})
                        continue
                    r = spawn(case, backend, args.repeats, args.threads, side_by_side=True)
                    ours_rounds[backend].append(r)
                    print(f"round {n + 1}/{args.rounds} | {case} | {backend} | "
                          f"{progress(r)}", flush=True)
                r = spawn_reference(args.reference_python, case, args.repeats, args.threads,
                                    inputs)
                ref_rounds.append(r)
                print(f"round {n + 1}/{args.rounds} | {case} | dl4bi | {progress(r)}",
                      flush=True)
            ref = merge_rounds(ref_rounds)
            reference_results.append(ref)
            for backend in variants:
                ours = (ours_rounds[backend][-1] if "skipped" in ours_rounds[backend][-1]
                        else merge_rounds(ours_rounds[backend]))
                results.append(ours)
                rows.append(compare(ours, ref))
    return {"results": results, "reference_results": reference_results, "comparison": rows}


def progress(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return r.get("skipped") or "failed: " + r["error"].splitlines()[-1]
    warm = r.get("warmup_s", (r.get("compile_s") or 0) + (r.get("first_run_s") or 0))
    return f"{r['seconds']:.3f} s (warm-up {warm:.2f} s) | peak RSS {r['peak_rss_mb']:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None,
                        help="comma-separated CTXxTEST forward cases (default: "
                        f"{','.join(DEFAULT_SIZES)}; with --reference-python "
                        f"{','.join(SIDE_BY_SIDE_SIZES)})")
    parser.add_argument("--backends", default=None,
                        help="comma-separated (default: tiled,dense,auto; with "
                        "--reference-python auto)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--train-precision", default="fp32",
                        help="comma-separated training precisions of the training step: "
                        f"{', '.join(TRAINING_PRECISIONS)} (default fp32)")
    parser.add_argument("--out", default="benchmarks/results/forward.json")
    parser.add_argument("--reference-python", metavar="PATH",
                        help="python of an environment with dl4bi 0.1.3 + JAX: run the "
                        "reference side by side and print the ratios")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --reference-python: alternating rounds per case (default 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--side-by-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.case = args.child
        child(args)
        return
    reference = args.reference_python is not None
    if args.sizes is None:
        args.sizes = ",".join(SIDE_BY_SIDE_SIZES if reference else DEFAULT_SIZES)
    if args.backends is None:
        args.backends = "auto" if reference else "tiled,dense,auto"
    cases = [s for s in args.sizes.split(",") if s]
    args.train_precision = args.train_precision.split(",")
    for precision in args.train_precision:
        if precision not in TRAINING_PRECISIONS:
            parser.error(f"--train-precision: {precision!r} is not one of {TRAINING_PRECISIONS}")
    if not args.no_train:
        cases.append("train")
    if reference:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        try:
            versions = reference_versions(args.reference_python)
        except ReferenceUnavailable as err:
            parser.error(str(err))
        report = side_by_side(args, cases, args.backends.split(","))
        print()
        print(comparison_table(report["comparison"]))
        meta = run_meta(
            args.threads, rounds=args.rounds, repeats=args.repeats,
            cpus=sorted(os.sched_getaffinity(0))[:args.threads],
            thread_limit="each subprocess confined to the first --threads allowed CPUs "
            "(sched_setaffinity); ours also torch.set_num_threads, XLA sizes its CPU "
            "thread pools from the affinity mask",
            reference={"python": args.reference_python, **versions,
                       "xla_flags": os.environ.get("XLA_FLAGS", "")})
        out = write_json(args.out, {"meta": meta, **report})
        print(f"\nwrote {out}")
        return
    results = []
    for case in cases:
        for backend in case_backends(case, args.backends.split(","), args.train_precision):
            if backend == "dense" and case != "train" and not dense_fits(case):
                results.append({"case": case, "backend": backend,
                                 "skipped": "skipped: dense scores would exceed 8 GB"})
                continue
            result = spawn(case, backend, args.repeats, args.threads)
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    out = write_json(args.out, {"meta": run_meta(args.threads), "results": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
