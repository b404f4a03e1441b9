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
CPU, growing test sets (memory should stay flat), one process each:
    python benchmarks/sir_scaling.py --test-cells 65536 --rounds 1 --checkpoint ...
Without ``--checkpoint`` the paper's SIR model is built untrained (the timing does not depend
on the weights; the accuracy then means nothing and is not printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from bsatnp.batch import Batch
from bsatnp.experiment import load_experiment
from bsatnp.io.checkpoint import load_model
from bsatnp.metrics import categorical_metrics
from bsatnp.precision import PRECISIONS, inference_precision
from bsatnp.tasks.sir import SIRSimulator, SIRTask


def scaling_batch(task: SIRTask, sim: SIRSimulator, n_ctx: int, n_test: int,
                  generator: torch.Generator) -> Batch:
    """One frame of a fresh epidemic: ``n_ctx`` random context cells, ``n_test`` test cells."""
    frames, _, _ = sim.simulate(1, generator)
    time_index = int(torch.randint(0, sim.n_frames, (1,), generator=generator))
    s, f = task.cells_and_classes(frames[0, time_index][None])
    order = torch.randperm(s.shape[1], generator=generator)
    ctx, test = order[:n_ctx], order[:n_test] if n_test < s.shape[1] else torch.arange(s.shape[1])
    return Batch(s_ctx=s[:, ctx], f_ctx=f[:, ctx], s_test=s[:, test], f_test=f[:, test])


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS on the CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


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
        conditioned = model.condition(batch)
        encoded = time.perf_counter()
        probs = torch.cat([
            conditioned.predictive({"s_test": batch.s_test[:, i : i + args.chunk]}).probs.cpu()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained SIR model (default: untrained)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--n-ctx", type=int, default=100_000)
    parser.add_argument("--test-cells", type=int, help="default: every cell")
    parser.add_argument("--rounds", type=int, default=10,
                        help="timed rounds after a warm-up round (0: one cold round, timed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=65_536, help="test cells per decode")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated: fp32, tf32, bf16 (CUDA; the same batches for "
                             "each, errors reported against the first)")
    parser.add_argument("--out", default="benchmarks/results/sir_scaling.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    half = 32.0 * args.side / 1024
    task = SIRTask(side=args.side, box=(-half, half), n_frames=args.frames, n_ctx=args.n_ctx,
                   min_ctx=args.n_ctx, max_ctx=args.n_ctx, n_test=args.side**2)
    sim = SIRSimulator(height=args.side, width=args.side, n_frames=args.frames)
    if args.checkpoint:
        model = load_model(args.checkpoint, device)
    else:
        torch.manual_seed(0)
        model = load_experiment("sir").build_model().to(device).eval()
    n_test = args.test_cells or args.side**2
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
        records[precision] = entry
        print(precision, json.dumps({k: v for k, v in entry.items() if k != "seconds"}),
              flush=True)
    record = {
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.machine()}, {args.threads} threads)",
        "side": args.side, "frames": args.frames, "n_ctx": args.n_ctx, "n_test": n_test,
        "rounds": args.rounds, "chunk": args.chunk, "trained": bool(args.checkpoint),
        **records[precisions[0]], "precisions": records,
    }
    print(json.dumps({k: v for k, v in record.items() if k not in ("seconds", "precisions")},
                     indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
