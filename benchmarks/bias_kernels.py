"""Bias profiles on one tile, eager against compiled, side by side in one run.

For each bias family, the bias of one ``[B, H, tq, tk]`` tile and its parameters' gradients
(forward + backward, as a training step needs them), and the forward alone (inference),
timed alternately for the eager and the inductor-compiled path (``bsatnp.attention.compiled``;
``BSATNP_COMPILE`` decides which one the models use). Compile time is reported apart from
the medians. The compiled TISA rows are the library's path (a compiled forward, and a
compiled backward that recomputes the terms) and, for comparison, autograd through the
compiled forward ("autograd saves the terms": the partitioner saves each term for the
backward, which made the forward several times slower). The RBF family runs through
``exp_basis`` (one exponential per distinct rate) in training and, in inference, through the
compiled ``exp_family_profile`` where each head has its own rates (as in the shipped ``gp2d``
model, whose rates these rows use, with that model's heads in place of ``H``).

With ``--checkpoint``, the TISA parameters are those of a trained model's first TISA bias
and the distances span ``[0, --max-dist]`` (the SIR scaling run's lattice reaches 90): far
pairs under a sharp profile underflow, and the row "compiled, no underflow guard" (plain
``a·exp(−b(d−c)²)``, whose subnormal results take x86's slow path) shows what
``numerics.exp_floored`` saves.

Usage:
    python benchmarks/bias_kernels.py                        # 8×8×1024×512 tile, F = 5
    python benchmarks/bias_kernels.py --tile 1 4 4096 4096 --threads 2
    python benchmarks/bias_kernels.py --checkpoint runs/sir/bsatnp/last.safetensors \
        --tile 1 4 1024 4096 --max-dist 90 --out benchmarks/results/bias_kernels_sir.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import run_meta, timed, trained_bias, write_json

from bsatnp.attention import compiled
from bsatnp.attention.exp_basis import exp_basis, head_rates
from bsatnp.pretrained import pretrained_path


def unguarded_profile(dist: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      c: torch.Tensor) -> torch.Tensor:
    """The TISA profile without the underflow guard (for comparison only)."""
    return sum(a[..., f] * torch.exp(-b[..., f] * (dist - c[..., f]).square())
               for f in range(a.shape[-1]))


def trained_params(checkpoint: str, family: str) -> list[torch.Tensor]:
    """The parameters ``[H, F]`` (``a, b`` and for TISA ``c``) of a trained model's first
    bias of ``family``."""
    term = trained_bias(checkpoint, family).terms[0]
    return [p.detach().clone() for p in term.params() if p is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, nargs=4, default=[8, 8, 1024, 512],
                        metavar=("B", "H", "TQ", "TK"))
    parser.add_argument("--basis", type=int, default=5, help="basis functions F")
    parser.add_argument("--checkpoint", help="take the TISA parameters of this trained model")
    parser.add_argument("--max-dist", type=float, default=2.0, help="distances in [0, this]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/bias_kernels.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B, H, tq, tk = args.tile
    g = torch.Generator().manual_seed(0)
    dist = args.max_dist * torch.rand(B, 1, tq, tk, generator=g)
    if args.checkpoint:
        params = [p.view(1, p.shape[0], 1, 1, -1).requires_grad_()
                  for p in trained_params(args.checkpoint, "tisa")]
        if params[0].shape[1] != H:
            parser.error(f"--tile: the checkpoint's bias has {params[0].shape[1]} heads")
        args.basis = params[0].shape[-1]
    else:
        params = [torch.rand(1, H, 1, 1, args.basis, generator=g).requires_grad_()
                  for _ in "abc"]
    exponent = -params[1].detach() * (dist[..., None] - params[2].detach()).square()
    subnormal_share = ((exponent > -104) & (exponent < -87)).double().mean().item()
    grad_out = torch.randn(B, H, tq, tk, generator=g)
    a2, b2 = (p.detach().view(H, -1).clone().requires_grad_() for p in params[:2])

    start = time.perf_counter()
    tisa_compiled = compiled._Compiled(compiled.tisa_profile, compiled.tisa_profile_grads)
    torch.autograd.grad(tisa_compiled(dist, *params), params, grad_out)
    with torch.no_grad():
        tisa_compiled(dist, *params)
    compile_s = time.perf_counter() - start
    if tisa_compiled.compiled is None:
        parser.error("the TISA profile was not compiled (BSATNP_COMPILE=0, or compiling failed)")
    tisa_autograd = torch.compile(compiled.tisa_profile, dynamic=True)
    torch.autograd.grad(tisa_autograd(dist, *params), params, grad_out)
    unguarded = torch.compile(unguarded_profile, dynamic=True)
    with torch.no_grad():
        unguarded(dist, *params)

    def train(profile: Callable[..., torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(profile(dist, *params), params, grad_out)

    def infer(profile: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return profile(dist, *params)
        return run

    rbf_input = dist[:, 0]
    rbf_a, rbf_b = trained_params(str(pretrained_path("gp2d")), "rbf")
    grouped = head_rates(rbf_a, rbf_b)
    assert grouped is not None, "the shipped gp2d model has one rate per head"
    rate, amp = (p.view(1, rbf_a.shape[0], 1, 1, -1) for p in grouped)
    rbf_r = dist.square()  # d², [B, 1, tq, tk]
    rbf_compiled = torch.compile(compiled.exp_family_profile, dynamic=True)
    with torch.no_grad():
        rbf_compiled(rbf_r, amp, rate)
        rbf_diff = (rbf_compiled(rbf_r, amp, rate).double()
                    - exp_basis(rbf_r[:, 0].double(), rbf_a.double(), rbf_b.double())).abs()
    cases = {
        ("tisa", "eager", "forward+backward"): train(compiled.tisa_profile),
        ("tisa", "compiled", "forward+backward"): train(tisa_compiled),
        ("tisa", "compiled, autograd saves the terms", "forward+backward"): train(tisa_autograd),
        ("tisa", "eager", "forward"): infer(compiled.tisa_profile),
        ("tisa", "compiled", "forward"): infer(tisa_compiled),
        ("tisa", "compiled, no underflow guard", "forward"): infer(unguarded),
        ("rbf", "exp_basis", "forward+backward"):
            lambda: torch.autograd.grad(exp_basis(rbf_input, a2, b2), (a2, b2), grad_out),
        ("rbf", "exp_basis", "forward"): infer(lambda *_: exp_basis(rbf_r[:, 0], rbf_a, rbf_b)),
        ("rbf", "compiled", "forward"): infer(lambda *_: rbf_compiled(rbf_r, amp, rate)),
    }
    with torch.no_grad():
        diff = (tisa_compiled(dist, *params).double()
                - compiled.tisa_profile(dist.double(), *(p.double() for p in params))).abs()
    times: dict[tuple[str, str, str], list[float]] = {key: [] for key in cases}
    for _ in range(args.rounds):  # alternate, so machine noise hits every case alike
        for key, fn in cases.items():
            times[key].append(timed(fn))
    rows = [{"family": f, "path": p, "pass": w, "seconds": statistics.median(t), "times": t}
            for (f, p, w), t in times.items()]
    eager = {(r["family"], r["pass"]): r["seconds"] for r in rows
             if r["path"] in ("eager", "exp_basis")}
    print(f"tile B={B} H={H} tq={tq} tk={tk}, F={args.basis}, {args.threads} thread(s); "
          f"compiling took {compile_s:.1f} s; compiled − float64 max |Δ| "
          f"{diff.max().item():.1e}; exponents in the subnormal band: {subnormal_share:.1%}; "
          f"rbf (gp2d rates, {rbf_a.shape[0]} heads) compiled − float64 max |Δ| "
          f"{rbf_diff.max().item():.1e}")
    print("| family | path | pass | median s | eager / this |")
    print("|---|---|---|---|---|")
    for r in rows:
        base = eager.get((r["family"], r["pass"]))
        ratio = f"{base / r['seconds']:.1f}" if base else "–"
        print(f"| {r['family']} | {r['path']} | {r['pass']} | {r['seconds']:.3f} | {ratio} |")
    record = {**run_meta(args.threads), "tile": args.tile,
              "basis": args.basis, "checkpoint": args.checkpoint, "max_dist": args.max_dist,
              "subnormal_exponent_share": subnormal_share, "compile_seconds": compile_s,
              "max_abs_error_vs_float64": diff.max().item(),
              "rbf_max_abs_error_vs_float64": rbf_diff.max().item(), "rows": rows}
    out = write_json(args.out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
