"""The paper's SIR scaling run (PROTOCOLS §5): 100,000 observed cells → 1,048,576 predicted.

One epidemic on a 1024×1024 lattice over [−32, 32]² (200 frames); a frame is drawn, exactly
``--n-ctx`` random cells are the context and ``--test-cells`` cells (all of them by default)
the test set, B = 1. Each round times simulation, batching and prediction, as the
reference does; one warm-up round first. The context is encoded once and the test cells are
decoded in chunks of ``--chunk`` (the model's ``condition``), so memory stays flat as the
test set grows. Prints wall time (and its encode / decode parts) and peak memory (RSS on
the CPU, allocated memory on CUDA) and writes JSON.

Usage (one call on a GPU machine; ~minutes):
    python benchmarks/sir_scaling.py --device cuda --checkpoint runs/sir/last.safetensors
CPU (hours): one cold round in resumable pieces, with the time and peak RSS after 65,536,
262,144 and 1,048,576 test cells from the same run (memory should stay flat):
    python benchmarks/sir_scaling.py --work runs/sir_scaling --checkpoint ...
With ``--work DIR`` the batch, the encoded context, each decoded chunk's class probabilities
and a log of the encode and of every chunk (seconds, peak RSS) are kept in DIR; the same
command continues an interrupted run from the saved encoding. The test
cells are a random permutation of the lattice, so each prefix is a random subset.
With ``--neighbours K`` each tile of test cells is predicted from its K nearest context cells
(local conditioning) instead of all 100,000:
    python benchmarks/sir_scaling.py --checkpoint sir --neighbours 512 --rounds 5 \
        --out benchmarks/results/sir_scaling_local.json
Without ``--checkpoint`` the paper's SIR model is built untrained (the timing does not depend
on the weights; the accuracy then means nothing and is not printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from common import peak_rss_mb, run_meta, write_json
from safetensors.torch import load_file, save

from bsatnp.batch import Batch
from bsatnp.data.neighbours import NeighbourSearch
from bsatnp.experiment import load_experiment
from bsatnp.io.checkpoint import load_model
from bsatnp.io.files import complete_lines, write_atomic
from bsatnp.metrics import categorical_metrics
from bsatnp.models.base import ConditionedModel, model_dtype
from bsatnp.precision import PRECISIONS, inference_precision
from bsatnp.pretrained import checkpoint_path
from bsatnp.tasks.sir import SIRSimulator, SIRTask


def scaling_batch(task: SIRTask, sim: SIRSimulator, n_ctx: int, n_test: int,
                  generator: torch.Generator) -> Batch:
    """One frame of a fresh epidemic: ``n_ctx`` random context cells, ``n_test`` test cells."""
    frames, _, _ = sim.simulate(1, generator)
    time_index = int(torch.randint(0, sim.n_frames, (1,), generator=generator))
    s, f = task.cells_and_classes(frames[0, time_index][None])
    order = torch.randperm(s.shape[1], generator=generator)
    ctx, test = order[:n_ctx], order[:n_test]
    return Batch(s_ctx=s[:, ctx], f_ctx=f[:, ctx], s_test=s[:, test], f_test=f[:, test])


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS on the CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_mb() / 1024


def run_rounds(model: torch.nn.Module, task: SIRTask, sim: SIRSimulator,
               args: argparse.Namespace, n_test: int, generator: torch.Generator,
               device: torch.device) -> tuple[list[float], list[dict], list[dict], torch.Tensor]:
    """A warm-up round then ``args.rounds`` timed ones (one cold timed round for 0).

    Returns:
        Seconds per timed round, their simulate / encode / decode parts, the categorical
        scores, and the class probabilities of the last round ``[1, n_test, 3]`` (CPU).
    """
    times, parts, scores = [], [], []
    probs = torch.empty(0)
    for round_ in range(args.rounds + 1):  # round 0 warms up
        start = time.perf_counter()
        batch = scaling_batch(task, sim, args.n_ctx, n_test, generator).to(device)
        simulated = time.perf_counter()
        if args.neighbours:
            search = NeighbourSearch(batch.s_ctx[0].double().cpu().numpy(), args.neighbours)
            encoded = time.perf_counter()
            probs = local_probs(model, batch, search, args.chunk)
        else:
            conditioned = model.condition(batch)
            encoded = time.perf_counter()
            probs = torch.cat([
                conditioned.predictive({"s_test": batch.s_test[:, i : i + args.chunk]}
                                       ).probs.cpu()
                for i in range(0, n_test, args.chunk)
            ], dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        print(f"round {round_}: {end - start:.1f} s (simulate {simulated - start:.1f}, "
              f"encode {encoded - simulated:.1f}, decode {end - encoded:.1f})", flush=True)
        if round_ or args.rounds == 0:
            times.append(end - start)
            parts.append({"simulate": simulated - start, "encode": encoded - simulated,
                          "decode": end - encoded})
            scores.append(categorical_metrics(probs, batch.f_test.cpu(),
                                              batch.test_mask().cpu()))
    return times, parts, scores, probs


def local_probs(model: torch.nn.Module, batch: Batch, search: NeighbourSearch,
                chunk: int) -> torch.Tensor:
    """Class probabilities ``[1, n_test, C]`` with each tile of test cells conditioned on
    its neighbourhood only (local conditioning; the model's bias on distances makes the
    absolute position irrelevant, so no frame is needed)."""
    probs = torch.empty(1, batch.s_test.shape[1], model.config.dim_f)
    for tile in search.tiles(batch.s_test[0].double().cpu().numpy(), max_targets=chunk):
        context = torch.as_tensor(tile.context, device=batch.s_ctx.device)
        targets = torch.as_tensor(tile.targets, device=batch.s_ctx.device)
        local = Batch(s_ctx=batch.s_ctx[:, context], f_ctx=batch.f_ctx[:, context],
                      s_test=batch.s_test[:, targets])
        probs[:, tile.targets] = model.condition(local).predictive(
            {"s_test": local.s_test}).probs.cpu()
    return probs


MILESTONES = (65_536, 262_144, 1_048_576)
"""Test-set sizes reported from one ``--work`` run."""


def run_in_pieces(model: torch.nn.Module, task: SIRTask, sim: SIRSimulator,
                  args: argparse.Namespace, n_test: int, device: torch.device) -> dict:
    """One cold round kept in ``args.work``: continues where an earlier process stopped.

    Returns:
        The record: simulate and encode seconds, per-milestone decode seconds and peak RSS
        (each a running maximum over the processes that ran so far), and the categorical
        metrics over all test cells.
    """
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batch_file, log_file = work / "batch.safetensors", work / "log.jsonl"
    identity = {"side": args.side, "frames": args.frames, "n_ctx": args.n_ctx,
                "n_test": n_test, "chunk": args.chunk, "checkpoint": args.checkpoint}
    rows = [json.loads(line) for line in complete_lines(log_file).splitlines()]
    if rows and rows[0] != {"identity": identity}:
        raise SystemExit(f"{log_file} belongs to another run ({rows[0]}); choose another --work")
    if not rows:
        append_row(log_file, {"identity": identity})
    start = time.perf_counter()
    if batch_file.exists():
        batch = Batch(**load_file(str(batch_file)))
    else:
        batch = scaling_batch(task, sim, args.n_ctx, n_test, torch.Generator().manual_seed(0))
        tensors = {f.name: getattr(batch, f.name) for f in fields(batch)}
        write_atomic(batch_file, save({name: t.contiguous() for name, t in tensors.items()
                                       if t is not None}))
        append_row(log_file, {"simulate_s": time.perf_counter() - start})
    batch = batch.to(device)
    encoded_file = work / "encoded.safetensors"
    if encoded_file.exists():  # the context states of the first process: no second encode
        model.check_batch(batch)
        states = load_file(str(encoded_file), device=str(device))
        encoded = [states[f"block_{i}"] for i in range(len(states))]
        conditioned = ConditionedModel(
            model, batch.to(dtype=model_dtype(model)).sanitized(), encoded)
        conditioned.predictive({"s_test": batch.s_test[:, :256]})  # compile here, untimed
        append_row(log_file, {"encoded_loaded": True, "peak_rss_gib": peak_memory_gib(device)})
    else:
        start = time.perf_counter()
        conditioned = model.condition(batch)
        append_row(log_file, {"encode_s": time.perf_counter() - start,
                              "peak_rss_gib": peak_memory_gib(device)})
        if isinstance(conditioned.encoded, list):  # BSA-TNP: context tokens per block
            write_atomic(encoded_file, save({f"block_{i}": state.contiguous()
                                             for i, state in enumerate(conditioned.encoded)}))
    done = {row["stop"] for row in rows if "stop" in row}
    for i in range(0, n_test, args.chunk):
        stop = min(i + args.chunk, n_test)
        if stop in done and (work / f"probs_{i}.npy").exists():
            continue
        start = time.perf_counter()
        probs = conditioned.predictive({"s_test": batch.s_test[:, i:stop]}).probs.cpu()
        seconds = time.perf_counter() - start
        np.save(work / f"probs_{i}.npy", probs.numpy())
        append_row(log_file, {"start": i, "stop": stop, "seconds": seconds,
                              "peak_rss_gib": peak_memory_gib(device)})
        print(f"cells {stop:,}/{n_test:,}: chunk {seconds:.0f} s", flush=True)
    rows = [json.loads(line) for line in complete_lines(log_file).splitlines()][1:]
    chunks = sorted({r["start"]: r for r in rows if "stop" in r}.values(),  # last per chunk
                    key=lambda r: r["stop"])
    probs = torch.cat([torch.from_numpy(np.load(work / f"probs_{r['start']}.npy"))
                       for r in chunks], dim=1)
    encodes = [r for r in rows if "encode_s" in r]
    simulate = next((r["simulate_s"] for r in rows if "simulate_s" in r), None)
    milestones = []
    for size in sorted({m for m in MILESTONES if m < n_test} | {n_test}):
        upto = [r for r in chunks if r["stop"] <= size]
        decode = sum(r["seconds"] for r in upto)
        milestones.append({
            "test_cells": size, "decode_s": decode,
            "wall_s": (simulate or 0.0) + encodes[0]["encode_s"] + decode,
            "peak_rss_gib": max([encodes[0]["peak_rss_gib"], *(r["peak_rss_gib"] for r in upto)]),
        })
    return {"simulate_s": simulate, "encode_s": [r["encode_s"] for r in encodes],
            "processes": sum("encode_s" in r or "encoded_loaded" in r for r in rows),
            "milestones": milestones,
            "metrics": categorical_metrics(probs, batch.f_test.cpu(), batch.test_mask().cpu())}


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line and flush it."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained SIR model, or 'sir' for the shipped "
                        "one (default: untrained)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--n-ctx", type=int, default=100_000)
    parser.add_argument("--test-cells", type=int, help="default: every cell")
    parser.add_argument("--rounds", type=int, default=10,
                        help="timed rounds after a warm-up round (0: one cold round, timed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=65_536, help="test cells per decode")
    parser.add_argument("--neighbours", type=int,
                        help="local conditioning: each tile of test cells from its K nearest "
                             "context cells (data/neighbours.py); default: the whole context")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated: fp32, tf32, bf16 (CUDA; the same batches for "
                             "each, errors reported against the first)")
    parser.add_argument("--work", help="one cold round in resumable pieces kept in this "
                        "directory (CPU runs of hours; see the module docstring)")
    parser.add_argument("--out", default="benchmarks/results/sir_scaling.json")
    args = parser.parse_args()
    if args.work and args.neighbours:
        parser.error("--neighbours runs in rounds (minutes on the CPU); drop --work")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    half = 32.0 * args.side / 1024
    task = SIRTask(side=args.side, box=(-half, half), n_frames=args.frames, n_ctx=args.n_ctx,
                   min_ctx=args.n_ctx, max_ctx=args.n_ctx, n_test=args.side**2)
    sim = SIRSimulator(height=args.side, width=args.side, n_frames=args.frames)
    if args.checkpoint:
        model = load_model(checkpoint_path(args.checkpoint), device)
    else:
        torch.manual_seed(0)
        model = load_experiment("sir").build_model().to(device).eval()
    n_test = args.test_cells or args.side**2
    if args.work:
        record = {**run_meta(args.threads, device=str(device)), "side": args.side,
                  "frames": args.frames, "n_ctx": args.n_ctx, "n_test": n_test,
                  "chunk": args.chunk, "trained": bool(args.checkpoint),
                  **run_in_pieces(model, task, sim, args, n_test, device)}
        print(json.dumps(record, indent=1))
        write_json(args.out, record)
        return
    precisions = args.precision.split(",")
    if unknown := sorted(set(precisions) - set(PRECISIONS)):
        parser.error(f"--precision: unknown {unknown}; choose from {PRECISIONS}")
    records = {}
    first_probs = None
    for precision in precisions:
        generator = torch.Generator().manual_seed(0)  # the same batches at every precision
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with inference_precision(precision):
            times, parts, scores, probs = run_rounds(model, task, sim, args, n_test, generator,
                                                     device)
        entry = {"seconds_median": statistics.median(times), "seconds": times, "parts": parts,
                 "peak_memory_gib": peak_memory_gib(device)}
        if first_probs is None:
            first_probs = probs
        else:
            base = precisions[0]
            entry[f"max_abs_prob_error_vs_{base}"] = (probs - first_probs).abs().max().item()
            entry[f"class_changed_fraction_vs_{base}"] = (
                probs.argmax(-1) != first_probs.argmax(-1)).float().mean().item()
        if args.checkpoint:
            entry["nll"] = statistics.mean(s["nll"] for s in scores)
            entry["acc"] = statistics.mean(s["acc"] for s in scores)
            entry["scores"] = scores  # per round
        records[precision] = entry
        print(precision, json.dumps({k: v for k, v in entry.items() if k != "seconds"}),
              flush=True)
    record = {
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.machine()}, {args.threads} threads)",
        "side": args.side, "frames": args.frames, "n_ctx": args.n_ctx, "n_test": n_test,
        "rounds": args.rounds, "chunk": args.chunk, "trained": bool(args.checkpoint),
        "neighbours": args.neighbours,
        **records[precisions[0]], "precisions": records,
    }
    print(json.dumps({k: v for k, v in record.items() if k not in ("seconds", "precisions")},
                     indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
