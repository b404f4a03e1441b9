"""One-call GPU check: flex (and every backend) against a float64 CPU reference, then timings.

Made for a short device session (the whole run is sized to finish in a few minutes):

1. **Correctness.** For several shapes with ragged key masks and the RBF and TISA biases
   (TISA through its compiled profile), the ``flex``, ``tiled`` and ``dense`` backends on
   the device (float32) are compared with the ``dense`` backend in float64 on the CPU
   (itself tested against an independent reference in the test suite): outputs and
   gradients w.r.t. q, k, v and every bias parameter. Then the whole BSA-TNP:
   μ, σ, loss and the gradient of every parameter with ``backend="auto"`` on the device vs
   float64 on the CPU.
2. **Timing** (after warm-up, CUDA-synchronised medians): a training step at B=8, 512
   context slots (128–511 valid), 1024 test points for ``auto``/``dense``/``tiled``/``flex``; model
   forwards at B=1 for (ctx, test) = (2048, 4096), (16384, 65536) and, with ``--large``,
   (100000, 1000000).

Usage (on the device machine; writes ``$OUT/gpu_check.json`` or ``--out``):
    python benchmarks/gpu_check.py --large
    python benchmarks/gpu_check.py --device cpu --no-timing      # dry run of the checks
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from common import run_meta, write_json

from bsatnp import Batch
from bsatnp.attention.biases import AttentionBias, BiasSpec
from bsatnp.attention.functional import biased_attention
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP
from bsatnp.tasks.gp2d import GP2DTask

SHAPES = [(1, 4, 64, 48, 32), (3, 4, 200, 130, 32), (2, 2, 1024, 515, 16)]  # B, H, Lq, Lk, D
OUT_TOL, GRAD_TOL = 1e-5, 1e-4
"""The test suite's tolerances (issue 2): outputs and gradients vs float64, relative."""
GRADIENTS = ("dq", "dk", "dv", "da", "db", "dc")


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Max error relative to max(|ref|, 1) (the test suite's gradient measure)."""
    return float(((x.double().cpu() - ref) / ref.abs().clamp_min(1.0)).abs().max())


def attention_case(shape: tuple[int, ...], backend: str, device: str, seed: int,
                   family: str = "rbf") -> dict:
    """Errors of one backend on one random problem vs float64 dense on the CPU.

    ``family`` ``"tisa"`` runs the compiled TISA profile (forced for every tile size) and its
    recomputing backward on the device.
    """
    B, H, Lq, Lk, D = shape
    spec = BiasSpec(family=family, init="spread")
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in (Lq, Lk, Lk))
    cq, ck = 4 * torch.rand(B, Lq, 2, generator=g) - 2, 4 * torch.rand(B, Lk, 2, generator=g) - 2
    valid = torch.randint(1, Lk + 1, (B, 1), generator=g)
    mask = torch.arange(Lk)[None] < valid
    bias = AttentionBias((spec,), H)
    with torch.no_grad():
        for p in bias.parameters():
            p.mul_(0.5 + torch.rand(p.shape, generator=g))
    grad_out = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)

    def run(dtype: torch.dtype, dev: str, name: str) -> list[torch.Tensor]:
        b = AttentionBias((spec,), H).to(dev, dtype)
        b.load_state_dict(bias.state_dict())
        inputs = [t.to(dev, dtype).clone().requires_grad_() for t in (q, k, v)]
        out = biased_attention(*inputs, b, {"s": cq.to(dev, dtype)}, {"s": ck.to(dev, dtype)},
                               mask.to(dev), backend=name)
        out.backward(grad_out.to(dev, dtype))
        return [out.detach(), *(t.grad for t in inputs), *(p.grad for p in b.parameters())]

    ref = run(torch.float64, "cpu", "dense")
    previous = os.environ.get("BSATNP_COMPILE")
    os.environ["BSATNP_COMPILE"] = "1" if family == "tisa" else previous or "auto"
    try:
        got = run(torch.float32, device, backend)
    finally:
        os.environ["BSATNP_COMPILE"] = previous or "auto"
    names = ["out", "dq", "dk", "dv", *(f"d{p}" for p in "abc")]
    return {"shape": shape, "backend": backend, "family": family,
            **{n: _rel(x, r) for n, x, r in zip(names, got, ref)}}


def model_case(device: str) -> dict:
    """Whole-model errors: auto backend on ``device`` (float32) vs float64 on the CPU."""
    batch = GP2DTask(batch_size=4).sample(torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref_model = BSATNP(backend="dense").double()
    model = BSATNP(backend="auto").to(device)
    model.load_state_dict(ref_model.state_dict())

    def run(m: BSATNP, b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        dist = m(b)
        loss = masked_nll(dist, b.f_test, b.test_mask())
        grads = torch.autograd.grad(loss, list(m.parameters()))
        return dist.mean.detach(), dist.stddev.detach(), loss.detach(), grads

    dbl = batch.map(**{f: getattr(batch, f).double() for f in ("s_ctx", "f_ctx", "s_test",
                                                                "f_test")})
    mu_r, sd_r, loss_r, g_r = run(ref_model, dbl)
    mu, sd, loss, g = run(model, batch.to(device))
    return {"mu": _rel(mu, mu_r), "sigma": _rel(sd, sd_r), "loss": _rel(loss, loss_r),
            "grad_max": max(_rel(x, r) for x, r in zip(g, g_r))}


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_time(backend: str, device: str, repeats: int) -> float:
    """Median training-step seconds at B=8, 512 slots (128–511 valid), 1024 test points."""
    model = BSATNP(backend=backend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = GP2DTask().sample(torch.Generator().manual_seed(1)).to(device)

    def step() -> None:
        loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, device, repeats)


def forward_time(n_ctx: int, n_test: int, device: str, repeats: int) -> dict:
    """Median model-forward seconds and peak device memory at B=1 (auto backend)."""
    model = BSATNP().to(device).eval()
    g = torch.Generator().manual_seed(2)
    batch = Batch(s_ctx=4 * torch.rand(1, n_ctx, 2, generator=g) - 2,
                  f_ctx=torch.randn(1, n_ctx, 1, generator=g),
                  s_test=4 * torch.rand(1, n_test, 2, generator=g) - 2).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        seconds = timed(lambda: model(batch), device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"case": f"{n_ctx}x{n_test}", "seconds": seconds, "peak_mib": peak}


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or ``{"error": ...}`` when it raises (one failure must not
    hide the rest)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        return {"error": repr(err)[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--large", action="store_true", help="also 100K context / 1M test")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."),
                                                      "gpu_check.json"))
    args = parser.parse_args()
    dev = args.device
    backends = ["flex", "tiled", "dense"] if dev.startswith("cuda") else ["tiled", "dense"]
    report: dict = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else dev,
                    **run_meta(), "attention": [], "timing": {}}

    def log(entry: object) -> None:
        print(json.dumps(entry), flush=True)
        write_json(args.out, report)  # partial results too

    for i, shape in enumerate(SHAPES):
        for backend, family in itertools.product(backends, ("rbf", "tisa")):
            entry = guarded(attention_case, shape, backend, dev, seed=i, family=family)
            if "error" in entry:
                entry = {"shape": shape, "backend": backend, "family": family, **entry}
            report["attention"].append(entry)
            log(entry)
    report["model"] = guarded(model_case, dev)
    log(report["model"])
    if not args.no_timing:
        for backend in ("auto", "dense", "tiled", "flex"):
            name = f"train_{backend}"
            report["timing"][name] = guarded(train_step_time, backend, dev, args.repeats)
            log({name: report["timing"][name]})
        sizes = [(2048, 4096), (16384, 65536)] + ([(100_000, 1_000_000)] if args.large else [])
        for n_ctx, n_test in sizes:
            entry = guarded(forward_time, n_ctx, n_test, dev, args.repeats)
            report["timing"][f"{n_ctx}x{n_test}"] = entry
            log(entry)
    worst_out = max((e.get("out", 0.0) for e in report["attention"]), default=0.0)
    worst_grad = max((e.get(k, 0.0) for e in report["attention"] for k in GRADIENTS), default=0.0)
    failed = [e for e in report["attention"] if "error" in e]
    if "error" in report["model"]:
        failed.append(report["model"])
    ok = not failed and worst_out <= OUT_TOL and worst_grad <= GRAD_TOL
    print(f"worst attention error: outputs {worst_out:.2e} (tolerance {OUT_TOL:g}), gradients "
          f"{worst_grad:.2e} (tolerance {GRAD_TOL:g}); {len(failed)} failed cases; "
          f"{'PASS' if ok else 'FAIL'}; wrote {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
