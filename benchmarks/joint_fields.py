"""Sample fields side by side: the exact GP's posterior against the shipped gp2d model's.

    python benchmarks/joint_fields.py --out docs/results/joint/samples.png

One 2D-GP task drawn here (RBF kernel, variance 1, lengthscale ``--lengthscale``, noise 0.1
on ``--context`` uniform context points in [-2, 2]^2) and a ``--grid`` × ``--grid`` grid of
targets. Row 1: the truth with the context, the exact posterior mean (true
hyperparameters, float64) and two exact posterior samples (noise-free). Row 2: the model's
mean, two autoregressive joint samples (:func:`bsatnp.joint.autoregressive_samples`,
chunks of ``--chunk``, random order) and one sample of its diagonal predictive
(independent marginals: noise, not a field). Every panel shares one colour scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_meta, write_json  # noqa: E402

from bsatnp import Batch  # noqa: E402
from bsatnp.joint import autoregressive_samples  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402
from bsatnp.tasks.kernels import rbf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gp2d")
    parser.add_argument("--context", type=int, default=120)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--lengthscale", type=float, default=0.5)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results/joint/samples.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    axis = torch.linspace(-2, 2, args.grid, dtype=torch.float64)
    cells = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    s_ctx = (4 * torch.rand(args.context, 2, generator=g, dtype=torch.float64) - 2)
    points = torch.cat([s_ctx, cells])
    k = rbf(points[None], points[None], torch.tensor([1.0], dtype=torch.float64),
            torch.tensor([args.lengthscale], dtype=torch.float64))[0]
    chol = torch.linalg.cholesky(k + 1e-6 * torch.eye(len(points), dtype=torch.float64))
    field = chol @ torch.randn(len(points), generator=g, dtype=torch.float64)
    f_ctx = field[:args.context] + 0.1 * torch.randn(args.context, generator=g,
                                                     dtype=torch.float64)
    truth = field[args.context:]
    # The exact posterior of the noise-free field at the cells (true hyperparameters).
    n = args.context
    a = k[:n, :n] + (0.01 + 1e-6) * torch.eye(n, dtype=torch.float64)
    cross = k[:n, n:]
    la = torch.linalg.cholesky(a)
    mean = cross.mT @ torch.cholesky_solve(f_ctx[:, None], la)[:, 0]
    v = torch.linalg.solve_triangular(la, cross, upper=False)
    cov = k[n:, n:] - v.mT @ v + 1e-6 * torch.eye(len(cells), dtype=torch.float64)
    exact = mean[:, None] + torch.linalg.cholesky(cov) @ torch.randn(len(cells), 2, generator=g,
                                                             dtype=torch.float64)
    model = Predictor.from_pretrained(args.model).model
    batch = Batch(s_ctx=s_ctx[None].float(), f_ctx=f_ctx[None, :, None].float(),
                  s_test=cells[None].float())
    with torch.no_grad():
        predictive = model(batch)
    joint = autoregressive_samples(model, batch, 2, chunk=args.chunk,
                                   generator=torch.Generator().manual_seed(args.seed + 1))
    diagonal = predictive.sample()[0, :, 0]
    panels = [("truth and context", truth), ("exact GP: mean", mean),
              ("exact GP: sample 1", exact[:, 0]), ("exact GP: sample 2", exact[:, 1]),
              (f"{args.model}: mean", predictive.mean[0, :, 0]),
              (f"{args.model}: joint sample 1", joint[0, 0, :, 0]),
              (f"{args.model}: joint sample 2", joint[1, 0, :, 0]),
              (f"{args.model}: diagonal sample", diagonal)]
    limit = float(max(p.abs().max() for _, p in panels))
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6), constrained_layout=True)
    for ax, (title, values) in zip(axes.flat, panels, strict=True):
        image = ax.imshow(values.double().reshape(args.grid, args.grid).T.numpy(),
                          origin="lower", extent=(-2, 2, -2, 2), cmap="RdBu_r",
                          vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].scatter(s_ctx[:, 0], s_ctx[:, 1], s=6, c="k")
    fig.colorbar(image, ax=axes, shrink=0.8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)

    def rmse(values: torch.Tensor) -> float:
        return float((values.double() - truth).square().mean().sqrt())

    def roughness(values: torch.Tensor) -> float:  # mean squared neighbour difference
        grid = values.double().reshape(args.grid, args.grid)
        return float(((grid[1:] - grid[:-1]).square().mean()
                      + (grid[:, 1:] - grid[:, :-1]).square().mean()) / 2)

    record = {"meta": run_meta(args.threads, model=args.model, seed=args.seed,
                               context=args.context, grid=args.grid,
                               lengthscale=args.lengthscale, chunk=args.chunk),
              "rmse_to_truth": {name: rmse(values) for name, values in panels[1:]},
              "neighbour_roughness": {name: roughness(values) for name, values in panels}}
    write_json(args.out.with_suffix(".json"), record)
    print(f"wrote {args.out}")
    for name, value in record["neighbour_roughness"].items():
        print(f"  {name:28s} roughness {value:.4f}" + (
            f", RMSE to truth {record['rmse_to_truth'][name]:.3f}"
            if name in record["rmse_to_truth"] else ""))


if __name__ == "__main__":
    main()
