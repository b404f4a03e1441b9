"""Where a training step's (or a forward's) time goes, and how far it is from the floor.

One training step of the paper's 2D-GP BSA-TNP (B=8, 512 context slots with 128–511 valid,
1,024 test points; forward + backward + AdamW) under ``torch.profiler``: self CPU time by
operator, grouped into matrix products, the bias (exponentials and the compiled profiles),
softmax, other elementwise work and the rest. The floor is the step's matrix-product FLOPs
(``torch.utils.flop_counter``) at the sgemm throughput this machine measures in the same run
(a 2048³ ``torch.mm``, same thread count): no implementation can do the step's matrix
products faster, whatever it fuses.

With ``--forward CTXxTEST`` the same breakdown for one inference forward (B = 1) of the
paper's 2D-GP model on the batch ``benchmarks/forward.py`` times at that size.

Usage:
    python benchmarks/train_profile.py                 # 2 threads
    python benchmarks/train_profile.py --threads 1 --task sir
    python benchmarks/train_profile.py --forward 2048x4096
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch
from common import run_meta, timed, write_json
from forward import case_batch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from bsatnp.experiment import load_experiment
from bsatnp.loss import masked_nll

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
}


def group_of(name: str) -> str:
    """The group of a profiler row name (``other`` when none matches)."""
    if name.startswith("## Call CompiledFxGraph"):
        return "bias (exponential basis, compiled profiles)"
    for group, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return group
    return "other"


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Measured float32 ``torch.mm`` throughput at n×n×n, GFLOP/s (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="gp2d", help="a bundled config (its model and task)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--forward", metavar="CTXxTEST",
                        help="profile a B = 1 inference forward of the 2D-GP model instead")
    parser.add_argument("--out", help="JSON (default: benchmarks/results/train_profile_<task>"
                                      ".json, or forward_profile_<CTXxTEST>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    experiment = load_experiment(args.task)
    model = experiment.build_model()
    if args.forward:
        model.eval()
        batch = case_batch(args.forward)

        def step() -> None:
            with torch.no_grad():
                model(batch)
    else:
        batch = experiment.task.with_batch_size(8).sample(torch.Generator().manual_seed(123))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    step()  # warm-up (compiles, caches)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    gflop = counter.get_total_flops() / 1e9
    times = [timed(step) for _ in range(args.repeats)]
    with profile() as prof:
        step()
    by_group: dict[str, float] = defaultdict(float)
    for row in prof.key_averages():
        by_group[group_of(row.key)] += row.self_cpu_time_total / 1e6
    profiled = sum(by_group.values())
    peak = sgemm_gflops()
    seconds = statistics.median(times)
    floor = gflop / peak
    what = f"forward {args.forward}" if args.forward else args.task
    print(f"{what}: step {seconds:.3f} s (median of {args.repeats}, {args.threads} "
          f"thread(s)); {gflop:.1f} GFLOP of matrix products; sgemm {peak:.1f} GFLOP/s → "
          f"floor {floor:.3f} s; step / floor {seconds / floor:.1f}×")
    print("| group | profiled s | share |")
    print("|---|---|---|")
    for group, value in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {value:.3f} | {value / profiled:.0%} |")
    record = {**run_meta(args.threads), "task": args.task, "forward": args.forward,
              "step_s": seconds, "times": times, "matmul_gflop": gflop,
              "sgemm_gflops": peak, "floor_s": floor, "profiled_s": profiled,
              "groups": dict(by_group),
              "top_ops": [{"name": r.key, "self_s": r.self_cpu_time_total / 1e6,
                           "calls": r.count}
                          for r in sorted(prof.key_averages(),
                                          key=lambda r: -r.self_cpu_time_total)[:15]]}
    default = (f"forward_profile_{args.forward}" if args.forward
               else f"train_profile_{args.task}")
    out = write_json(args.out or f"benchmarks/results/{default}.json", record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
