"""Joint NLL on the 2D GP: the shipped gp2d model, diagonal vs autoregressive, vs the exact GP.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/joint_gp2d.py                 # ~2-3 min on 2 threads
    python benchmarks/joint_gp2d.py --n-batches 16 --chunks 1 4 16 64

Per task of a few small 2D-GP batches (``GP2DTask``: 128-255 valid context points, 128
noise-free test targets drawn jointly with the context, hyperparameters from the prior),
the joint negative log-likelihood of the test values, per target:

* ``exact_joint``: the exact GP's multivariate normal log-density of the test values given
  the context, with the true hyperparameters (float64; the floor);
* ``exact_diagonal``: the exact GP's marginals taken as independent (the oracle's per-point
  NLL, the best any diagonal predictive can do);
* ``model_diagonal``: the gp2d model's marginals as independent (one chunk of all points);
* ``model_ar_<c>``: the gp2d model autoregressively in chunks of ``c`` test points, in a
  random order per task (:func:`bsatnp.joint.autoregressive_log_likelihood`); the values of
  the earlier chunks are appended to the context as observations.

Mean ± standard error over tasks, seconds per method, written as JSON.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from common import run_meta, write_json

from bsatnp.joint import autoregressive_log_likelihood
from bsatnp.predictor import Predictor
from bsatnp.tasks import batch_generator
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.kernels import get_kernel
from bsatnp.tasks.oracle import GPParams, gp_posterior


def exact_joint_log_density(batch, params: GPParams) -> torch.Tensor:
    """``log N(f_test | μ, Σ)`` per task ``[B]`` of the exact posterior (float64)."""
    kernel = get_kernel(params.kernel)
    out = []
    for b in range(batch.batch_size):
        keep = batch.context_mask()[b]
        s_c, s_t = batch.s_ctx[b, keep].double(), batch.s_test[b].double()
        var, ls = params.var[b], params.lengthscale[b]

        def k(x, y, var=var, ls=ls):
            return kernel(x[None], y[None], var[None], ls[None], **params.kernel_kwargs)[0]

        a = k(s_c, s_c) + (params.jitter + float(params.noise) ** 2) * torch.eye(
            len(s_c), dtype=torch.float64)
        cross = k(s_c, s_t)
        chol = torch.linalg.cholesky(a)
        mean = cross.mT @ torch.cholesky_solve(batch.f_ctx[b, keep].double(), chol)
        v = torch.linalg.solve_triangular(chol, cross, upper=False)
        cov = k(s_t, s_t) + params.jitter * torch.eye(len(s_t), dtype=torch.float64) - v.mT @ v
        dist = torch.distributions.MultivariateNormal(mean[:, 0], covariance_matrix=cov)
        out.append(dist.log_prob(batch.f_test[b, :, 0].double()))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n-ctx", type=int, default=256, help="context slots")
    parser.add_argument("--min-ctx", type=int, default=128)
    parser.add_argument("--n-test", type=int, default=128)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/joint_gp2d.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = Predictor.from_pretrained("gp2d").model
    task = GP2DTask(batch_size=args.batch_size, n_ctx=args.n_ctx, n_test=args.n_test,
                    min_ctx=args.min_ctx, max_ctx=args.n_ctx - 1)
    methods = ["exact_joint", "exact_diagonal", "model_diagonal",
               *(f"model_ar_{c}" for c in args.chunks)]
    scores: dict[str, list[float]] = {m: [] for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    start_all = time.perf_counter()
    for index in range(args.n_batches):
        batch, params = task.draw(batch_generator(args.seed, index))
        n = batch.n_test

        def record(name, fn, n=n):
            start = time.perf_counter()
            with torch.no_grad():
                ll = fn()
            seconds[name] += time.perf_counter() - start
            scores[name].extend((-ll.double() / n).tolist())

        record("exact_joint", lambda batch=batch, params=params:
               exact_joint_log_density(batch, params))
        record("exact_diagonal", lambda batch=batch, params=params: gp_posterior(
            batch, params).log_prob(batch.f_test).sum((1, 2)))
        record("model_diagonal", lambda batch=batch, n=n:
               autoregressive_log_likelihood(model, batch, chunk=n))
        for c in args.chunks:
            generator = torch.Generator().manual_seed(1000 * args.seed + index)
            record(f"model_ar_{c}", lambda batch=batch, c=c, generator=generator:
                   autoregressive_log_likelihood(model, batch, chunk=c, generator=generator))
        last = {m: sum(scores[m][-args.batch_size:]) / args.batch_size for m in methods}
        print(f"batch {index}: " + ", ".join(f"{m} {v:.3f}" for m, v in last.items()),
              flush=True)
    elapsed = time.perf_counter() - start_all

    summary = {}
    for name, values in scores.items():
        t = torch.tensor(values, dtype=torch.float64)
        summary[name] = {"mean": float(t.mean()),
                         "stderr": float(t.std() / math.sqrt(len(t))),
                         "seconds": seconds[name]}
    exact = torch.tensor(scores["exact_joint"], dtype=torch.float64)
    for name, values in scores.items():  # paired gaps to the exact joint NLL
        gap = torch.tensor(values, dtype=torch.float64) - exact
        summary[name]["gap_to_exact_joint"] = {"mean": float(gap.mean()),
                                               "stderr": float(gap.std() / math.sqrt(len(gap)))}

    print(f"joint NLL per target, {len(exact)} tasks of {args.n_test} test points "
          f"({args.min_ctx}-{args.n_ctx - 1} context points), seed {args.seed}")
    print(f"{'method':<16} {'NLL':>9} {'s.e.':>7} {'gap':>8} {'s.e.':>7} {'seconds':>8}")
    for name, row in summary.items():
        gap = row["gap_to_exact_joint"]
        print(f"{name:<16} {row['mean']:>9.4f} {row['stderr']:>7.4f} {gap['mean']:>8.4f} "
              f"{gap['stderr']:>7.4f} {row['seconds']:>8.1f}")
    print(f"time {elapsed:.1f} s ({torch.get_num_threads()} threads)")

    record = {
        "what": "joint negative log-likelihood per test target (nats) of the 2D GP's test "
                "values given the context: exact GP (true hyperparameters) vs the gp2d "
                "model's diagonal and autoregressive factorisations (random order per task)",
        "model": "gp2d (shipped)",
        "n_batches": args.n_batches,
        "n_tasks": len(exact),
        "seed": args.seed,
        "chunks": args.chunks,
        "task": {k: str(v) for k, v in vars(task).items()},
        "results": summary,
        "seconds": elapsed,
        **run_meta(threads=args.threads),
    }
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
