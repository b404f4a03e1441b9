"""Where a training step's (or a forward's) time goes, and how far it is from the floor.

One training step of the paper's 2D-GP BSA-TNP (B=8, 512 context slots with 128–511 valid,
1,024 test points; forward + backward + AdamW) under ``torch.profiler``: self CPU time by
operator, grouped into matrix products, the bias (exponentials and the compiled profiles),
softmax, the fused attention kernels, other elementwise work and the rest. The floor is the
step's matrix-product FLOPs (``torch.utils.flop_counter``, plus those the fused C++ kernels
do, counted from their shapes) at the sgemm throughput this machine measures in the same run
(a 2048³ ``torch.mm``, same thread count): no implementation can do the step's matrix
products faster, whatever it fuses.

With ``--forward CTXxTEST`` the same breakdown for one inference forward (B = 1) of the
paper's 2D-GP model on the batch ``benchmarks/forward.py`` times at that size.

``--variants fp32,bf16,fp32/eager`` times the step (or forward) of each variant alternately in
this one process, the same weights and batch, and profiles each: a training precision
(``TrainConfig.precision``, :mod:`bsatnp.precision`), and ``/eager`` for the attention runtime
without compiled or fused kernels (``compile="never"``; :mod:`bsatnp.attention.fused_cpu`).
The floor stays the float32 one (the sgemm rate), with the bf16 matrix-product rate measured
beside it.

Usage:
    python benchmarks/train_profile.py                 # 2 threads
    python benchmarks/train_profile.py --threads 1 --task sir
    python benchmarks/train_profile.py --forward 2048x4096
    python benchmarks/train_profile.py --variants fp32,fp32/eager,bf16 --weights gp2d
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import replace

import torch
from common import matmul_gflops, run_meta, timed, write_json
from forward import case_batch
from torch.profiler import profile

from bsatnp.attention.runtime import AttentionRuntime, attention_runtime, current_runtime
from bsatnp.experiment import load_experiment
from bsatnp.io.checkpoint import load_checkpoint
from bsatnp.loss import masked_nll
from bsatnp.precision import TRAINING_PRECISIONS, training_precision
from bsatnp.pretrained import checkpoint_path

GROUPS = {
    "matrix products": ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::matmul",
                        "aten::_scaled_dot_product", "aten::linear"),
    "bias (exponential basis, compiled profiles)": ("aten::exp", "CompiledFxGraph",
                                                    "CompiledFunction", "aten::clamp_min"),
    "softmax": ("aten::_softmax", "aten::softmax"),
    "elementwise (mul, add, copy, fill, GELU, norm)": ("aten::mul", "aten::add", "aten::sub",
                                                      "aten::copy_", "aten::fill_",
                                                      "aten::gelu", "aten::native_layer_norm",
                                                      "aten::div", "aten::neg", "aten::where",
                                                      "aten::sum", "aten::pow", "aten::sqrt"),
    "optimizer (AdamW)": ("aten::_foreach", "Optimizer", "aten::lerp", "aten::addcmul",
                          "aten::addcdiv"),
    "fused attention kernels (products, bias, softmax)": ("bsatnp::fused",),
}


def group_of(name: str) -> str:
    """The group of a profiler row name (``other`` when none matches)."""
    if name.startswith("## Call CompiledFxGraph"):
        return "bias (exponential basis, compiled profiles)"
    for group, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return group
    return "other"


def sgemm_gflops(n: int = 2048, repeats: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Measured ``torch.mm`` throughput at n×n×n in ``dtype``, GFLOP/s (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def profile_groups(step) -> tuple[dict[str, float], list[dict[str, object]]]:
    """Self CPU time of one ``step()`` by group, and its 15 costliest operators."""
    with profile() as prof:
        step()
    by_group: dict[str, float] = defaultdict(float)
    for row in prof.key_averages():
        by_group[group_of(row.key)] += row.self_cpu_time_total / 1e6
    top = [{"name": r.key, "self_s": r.self_cpu_time_total / 1e6, "calls": r.count}
           for r in sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)[:15]]
    return dict(by_group), top


def print_groups(groups: dict[str, float]) -> None:
    profiled = sum(groups.values())
    print("| group | profiled s | share |")
    print("|---|---|---|")
    for group, value in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {value:.3f} | {value / profiled:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="gp2d", help="a bundled config (its model and task)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--forward", metavar="CTXxTEST",
                        help="profile a B = 1 inference forward of the 2D-GP model instead")
    parser.add_argument("--variants", default="fp32",
                        help="comma-separated, timed alternately: a training precision "
                             f"({', '.join(TRAINING_PRECISIONS)}), '/eager' for no compiled "
                             "or fused attention kernels (e.g. fp32,fp32/eager,bf16)")
    parser.add_argument("--weights", help="a checkpoint or shipped model whose weights to "
                                          "load (default: freshly initialised); a trained "
                                          "model's heads have rates of their own, which "
                                          "costs more in the bias than the shared init")
    parser.add_argument("--out", help="JSON (default: benchmarks/results/train_profile_<task>"
                                      ".json, or forward_profile_<CTXxTEST>.json)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    precision = {v: v.removesuffix("/eager") for v in variants}
    if unknown := sorted(set(precision.values()) - set(TRAINING_PRECISIONS)):
        parser.error(f"--variants: unknown precision {unknown}; choose from "
                     f"{TRAINING_PRECISIONS}")
    if args.forward and set(precision.values()) != {"fp32"}:
        parser.error("a --forward profile runs in fp32 (variants fp32 and fp32/eager)")

    def runtime(variant: str) -> AttentionRuntime:
        return replace(current_runtime(), compile="never") if variant.endswith(
            "/eager") else current_runtime()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    experiment = load_experiment(args.task)
    model = experiment.build_model()
    if args.weights:
        model.load_state_dict(load_checkpoint(checkpoint_path(args.weights)).model_state)
    steps = {}
    if args.forward:
        model.eval()
        batch = case_batch(args.forward)

        def forward(variant: str) -> None:
            with torch.no_grad(), attention_runtime(runtime(variant)):
                model(batch)
        for variant in variants:
            steps[variant] = lambda variant=variant: forward(variant)
    else:
        batch = experiment.task.with_batch_size(8).sample(torch.Generator().manual_seed(123))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        initial = {k: v.clone() for k, v in model.state_dict().items()}

        def train_step(variant: str) -> None:
            with attention_runtime(runtime(variant)):
                with training_precision(precision[variant], "cpu"):
                    predictive = model(batch)
                loss = masked_nll(predictive, batch.f_test, batch.test_mask())
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            model.load_state_dict(initial)  # every step from the same weights
        for variant in variants:
            steps[variant] = lambda variant=variant: train_step(variant)

    for step in steps.values():
        step()  # warm-up (compiles, caches)
    flops = {}
    for mode, step in steps.items():
        with matmul_gflops() as gflops:
            step()
        flops[mode] = gflops()
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    for _ in range(args.repeats):  # alternately, so drifts in the machine hit all alike
        for mode, step in steps.items():
            times[mode].append(timed(step))
    peak = sgemm_gflops()
    peak_bf16 = (sgemm_gflops(dtype=torch.bfloat16) if "bf16" in precision.values()
                 else None)
    what = f"forward {args.forward}" if args.forward else args.task
    runs = {}
    for mode, step in steps.items():
        seconds = statistics.median(times[mode])
        floor = flops[mode] / peak
        print(f"{what} [{mode}]: step {seconds:.3f} s (median of {args.repeats}, "
              f"{args.threads} thread(s)); {flops[mode]:.1f} GFLOP of matrix products; sgemm "
              f"{peak:.1f} GFLOP/s → floor {floor:.3f} s; step / floor {seconds / floor:.1f}×")
        groups, top = profile_groups(step)
        print_groups(groups)
        runs[mode] = {"step_s": seconds, "times": times[mode], "matmul_gflop": flops[mode],
                      "floor_s": floor, "profiled_s": sum(groups.values()), "groups": groups,
                      "top_ops": top}
    for variant in variants[1:]:
        print(f"{variants[0]}: {runs[variant]['step_s'] / runs[variants[0]]['step_s']:.2f}× "
              f"the speed of {variant}")
    record = {**run_meta(args.threads), "task": args.task, "forward": args.forward,
              "weights": args.weights, "sgemm_gflops": peak, "bf16_gemm_gflops": peak_bf16,
              **runs[variants[0]], "variants": runs}
    default = (f"forward_profile_{args.forward}" if args.forward
               else f"train_profile_{args.task}")
    out = write_json(args.out or f"benchmarks/results/{default}.json", record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
