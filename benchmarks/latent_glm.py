"""A count or binomial model against a penalised GLM and the floor, on the same batches.

    python benchmarks/latent_glm.py --checkpoint counts --batches 50
    python benchmarks/latent_glm.py --checkpoint runs/binomial/best.safetensors --batches 30

The test batches are those ``bsatnp evaluate`` draws for the checkpoint's task (its
evaluation seed, in-domain). Each task is scored three ways through
:func:`bsatnp.metrics.distribution_metrics`:

- ``model``: the checkpoint's predictive;
- ``glm``: a generalised linear model of the task's own context, fitted by scikit-learn per
  task: the log (counts) or logit (binomial) rate is a penalised B-spline surface of the
  location (``SplineTransformer``, 6 knots per axis, and the tensor product of the two
  axes), the penalty chosen from 1e-3 to 1 by 3-fold cross-validation on the context;
  exposures (trials) enter as the rate's weights, which for these links equals an offset.
  Its predictive is the GLM's own family (Poisson for counts, binomial for trials), so it
  has no overdispersion;
- ``floor``: the family under the true latent field (what no model beats on average).

Printed and written: mean ± s.e. over batches and the paired differences to the model.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_meta, write_json  # noqa: E402

from bsatnp.experiment import experiment_from_checkpoint  # noqa: E402
from bsatnp.io.checkpoint import load_checkpoint  # noqa: E402
from bsatnp.likelihoods import likelihood_family  # noqa: E402
from bsatnp.metrics import distribution_metrics  # noqa: E402
from bsatnp.pretrained import checkpoint_path  # noqa: E402
from bsatnp.tasks.base import batch_generator  # noqa: E402

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


def glm_mean(s_ctx: np.ndarray, y: np.ndarray, offset: np.ndarray, s_test: np.ndarray,
             offset_test: np.ndarray, binomial: bool) -> np.ndarray:
    """The GLM's predictive mean at the test points (counts at their exposures, or the
    success probability for a binomial)."""
    from sklearn.linear_model import LogisticRegression, PoissonRegressor
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, SplineTransformer

    basis = [SplineTransformer(n_knots=6, degree=3),
             PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if binomial:  # successes and failures as weighted 1/0 rows
            rows = np.concatenate([s_ctx, s_ctx])
            labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
            weights = np.concatenate([y, offset - y])
            keep = weights > 0
            pipeline = make_pipeline(*basis, LogisticRegression(max_iter=2000))
            search = GridSearchCV(pipeline, {"logisticregression__C": [1 / a for a in ALPHAS]},
                                  cv=3, scoring="neg_log_loss")
            if len(np.unique(labels[keep])) < 2:
                return np.full(len(s_test), float(y.sum() / offset.sum()))
            search.fit(rows[keep], labels[keep],
                       logisticregression__sample_weight=weights[keep])
            return search.predict_proba(s_test)[:, 1]
        pipeline = make_pipeline(*basis, PoissonRegressor(max_iter=2000))
        search = GridSearchCV(pipeline, {"poissonregressor__alpha": list(ALPHAS)}, cv=3,
                              scoring="neg_mean_poisson_deviance")
        search.fit(s_ctx, y / offset, poissonregressor__sample_weight=offset)
        return np.clip(search.predict(s_test), 1e-9, None) * offset_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint or shipped name")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default: benchmarks/results/latent_glm_<task family>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = checkpoint_path(args.checkpoint)
    stored = load_checkpoint(path)
    experiment = experiment_from_checkpoint(stored)
    task, model = experiment.task, stored.build_model().eval()
    family = likelihood_family(model.likelihood)
    binomial = task.likelihood == "binomial"
    glm_family = likelihood_family("binomial" if binomial else "poisson")
    floor_family = likelihood_family(task.likelihood)
    rows: dict[str, list[dict[str, float]]] = {"model": [], "glm": [], "floor": []}
    for index in range(args.batches):
        batch, floor = task.sample_with_oracle(batch_generator(experiment.eval.seed, index))
        with torch.no_grad():
            dist = model(batch)
        mask = batch.test_mask()
        rows["model"].append(distribution_metrics(family, dist, batch.f_test, mask))
        rows["floor"].append(distribution_metrics(floor_family, floor, batch.f_test, mask))
        offset_ctx = (batch.offset_ctx if batch.offset_ctx is not None
                      else torch.ones_like(batch.f_ctx))
        offset_test = (batch.offset_test if batch.offset_test is not None
                       else torch.ones_like(batch.f_test))
        means = []
        for b in range(batch.batch_size):
            valid = batch.context_mask()[b]
            means.append(glm_mean(batch.s_ctx[b][valid].double().numpy(),
                                  batch.f_ctx[b][valid, 0].double().numpy(),
                                  offset_ctx[b][valid, 0].double().numpy(),
                                  batch.s_test[b].double().numpy(),
                                  offset_test[b, :, 0].double().numpy(), binomial))
        mean = torch.as_tensor(np.stack(means), dtype=torch.float64)[..., None]
        glm = (torch.distributions.Binomial(offset_test.double(), probs=mean.clamp(1e-9, 1 - 1e-9))
               if binomial else torch.distributions.Poisson(mean))
        rows["glm"].append(distribution_metrics(glm_family, glm, batch.f_test, mask))
        print(f"batch {index + 1}/{args.batches}: NLL model {rows['model'][-1]['nll']:.3f}, "
              f"GLM {rows['glm'][-1]['nll']:.3f}, floor {rows['floor'][-1]['nll']:.3f}",
              flush=True)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, entries in rows.items():
        summary[name] = {}
        for metric in entries[0]:
            values = np.array([e[metric] for e in entries])
            entry = {"mean": float(values.mean()),
                     "se": float(values.std(ddof=1) / math.sqrt(len(values)))}
            if name != "model":
                diff = values - np.array([e[metric] for e in rows["model"]])
                entry["minus_model"] = {"mean": float(diff.mean()), "se": float(
                    diff.std(ddof=1) / math.sqrt(len(diff)))}
            summary[name][metric] = entry
    for name, entry in summary.items():
        print(f"{name:6s} " + ", ".join(f"{k} {v['mean']:.3f} ± {v['se']:.3f}"
                                        for k, v in entry.items()))
    out = args.out or Path(f"benchmarks/results/latent_glm_{task.likelihood}.json")
    write_json(out, {"meta": run_meta(args.threads, checkpoint=str(args.checkpoint),
                                      step=stored.step, task=task.name,
                                      likelihood=task.likelihood, batches=args.batches,
                                      eval_seed=experiment.eval.seed),
                     "summary": summary, "per_batch": rows})


if __name__ == "__main__":
    main()
