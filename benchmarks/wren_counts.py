"""Carolina wren counts (Breeding Bird Survey, Missouri 1994-2014): held-out route-years.

    python benchmarks/wren_counts.py --model counts --seeds 0,1,2,3,4

The 783 observed route-years of ``../shared/data/carolina_wren/`` (read in place) are split
at random, per seed, into 80 % training and 20 % test rows. Each method predicts the count
of every test route-year; scored per test row and averaged, with the s.e. over rows and
the paired difference to bsatnp:

- ``bsatnp``: a count model (``--model``: a shipped name or a checkpoint) predicting each
  year's test routes from that year's training routes (lon/lat; it reads space only, so
  each year is its own field), its own negative-binomial predictive;
- ``bsatnp_pooled``: the same model conditioned on every training row of every year at
  once, each row with an exposure of its year's factor (the year's mean training count over
  the mean of all training counts), and each test row predicted at its year's factor: a
  spatial rate surface shared by the years, scaled per year, so that a route's counts in
  other years inform it;
- ``glm_smooth``: a Poisson GLM with a spatio-temporal smooth (scikit-learn
  ``PoissonRegressor`` on B-spline bases of lon, lat and year and the lon × lat tensor
  product; its L2 penalty chosen by 5-fold cross-validation on the training rows), its
  Poisson predictive;
- ``glm_routes``: a Poisson GLM with one effect per route and a smooth of year, the route
  effects shrunk by the L2 penalty (a penalised-likelihood stand-in for a Poisson GLMM
  with route random effects; penalty by 5-fold cross-validation), its Poisson predictive;
- ``idw``: inverse-distance weighting of log(1 + count) within the year
  (:class:`bsatnp.models.IDW` through :class:`bsatnp.Predictor`, ``value_transform=
  "log1p"``): its log-normal predictive's mean and quantiles (no count distribution,
  so no NLL or CRPS).

Metrics: Poisson deviance of the predictive mean, MAE of the mean, NLL and CRPS of the
count distribution where the method has one, and the coverage of the central 90 %
interval (for count distributions, the 5 % and 95 % quantiles). Paired differences are to
``bsatnp_pooled`` when it runs (else to ``bsatnp``), over the same test rows.
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

from bsatnp.data.tables import read_points  # noqa: E402
from bsatnp.likelihoods import count_crps, likelihood_family  # noqa: E402
from bsatnp.models.local_average import IDW  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "carolina_wren" / \
    "carolina_wren_counts.csv"
METHODS = ("bsatnp", "bsatnp_pooled", "glm_smooth", "glm_routes", "idw")
LEVELS = (0.05, 0.95)


def poisson_deviance(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Per-row Poisson deviance ``2 (y log(y/μ) − (y − μ))`` (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(y / mu), 0.0)
    return 2 * (term - (y - mu))


def scores(y: np.ndarray, mean: np.ndarray, lower: np.ndarray, upper: np.ndarray,
           nll: np.ndarray | None = None, crps: np.ndarray | None = None) -> dict:
    """Per-row scores of one method."""
    out = {"deviance": poisson_deviance(y, mean), "mae": np.abs(y - mean),
           "cover90": ((y >= lower) & (y <= upper)).astype(float)}
    if nll is not None:
        out["nll"], out["crps"] = nll, crps
    return out


def bsatnp_scores(model: str, train, test, pooled: bool = False) -> dict:
    """Each year's test routes from that year's training routes (or, ``pooled``, from all
    training rows with year factors as exposures), the model's own predictive."""
    predictor = Predictor.load(model) if Path(model).exists() else Predictor.from_pretrained(
        model)
    family = likelihood_family(predictor.model.likelihood)
    roles = {"values": "cnt", "space": ("lon", "lat"), "crs": "lonlat"}
    if pooled:
        factor = train.groupby("year")["cnt"].mean() / train["cnt"].mean()
        train = train.assign(year_factor=train["year"].map(factor).to_numpy())
        test = test.assign(year_factor=test["year"].map(factor).to_numpy())
        fields = [(np.arange(len(test)), train)]
        roles["exposure"] = "year_factor"
    else:
        fields = [(np.flatnonzero(test["year"].to_numpy() == year), train[train["year"] == year])
                  for year in sorted(test["year"].unique())]
    parts = {key: np.empty(len(test)) for key in ("mean", "lower", "upper", "nll", "crps")}
    for rows, observed in fields:
        conditioned = predictor.condition(observed, neighbours=None, **roles)
        targets = test.iloc[rows]
        points, _ = read_points(targets, conditioned.schema, "targets", with_values=False)
        inputs = conditioned.normalizer.inputs(points, conditioned.schema)
        test_inputs = {"s_test": torch.as_tensor(inputs["s"], dtype=torch.float32)[None]}
        if "offset" in inputs:
            test_inputs["offset_test"] = torch.as_tensor(inputs["offset"],
                                                         dtype=torch.float32)[None]
        with torch.no_grad():
            dist = conditioned.model.predictive(test_inputs)
        y = torch.as_tensor(targets["cnt"].to_numpy(), dtype=torch.float64)[None, :, None]
        parts["mean"][rows] = dist.mean[0, :, 0].double().numpy()
        parts["lower"][rows] = family.quantile(dist, LEVELS[0])[0, :, 0].numpy()
        parts["upper"][rows] = family.quantile(dist, LEVELS[1])[0, :, 0].numpy()
        parts["nll"][rows] = -dist.log_prob(y.float())[0, :, 0].double().numpy()
        parts["crps"][rows] = family.crps(dist, y)[0, :, 0].double().numpy()
    return scores(test["cnt"].to_numpy(), parts["mean"], parts["lower"], parts["upper"],
                  parts["nll"], parts["crps"])


def glm_scores(kind: str, train, test) -> dict:
    """A penalised Poisson GLM (scikit-learn), its penalty by 5-fold cross-validation."""
    from scipy import stats
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import PoissonRegressor
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, SplineTransformer

    if kind == "glm_smooth":
        space = make_pipeline(SplineTransformer(n_knots=5, degree=3),
                              PolynomialFeatures(degree=2, interaction_only=True,
                                                 include_bias=False))
        features = ColumnTransformer([("space", space, ["lon", "lat"]),
                                      ("year", SplineTransformer(n_knots=6), ["year"])])
    else:
        features = ColumnTransformer([
            ("route", OneHotEncoder(handle_unknown="ignore"), ["loc.ID"]),
            ("year", SplineTransformer(n_knots=6), ["year"])])
    pipeline = make_pipeline(features, PoissonRegressor(max_iter=3000))
    search = GridSearchCV(pipeline, {"poissonregressor__alpha": np.logspace(-4, 1, 11)},
                          cv=5, scoring="neg_mean_poisson_deviance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(train, train["cnt"])
    mu = np.clip(search.predict(test), 1e-9, None)
    y = test["cnt"].to_numpy()
    poisson = stats.poisson(mu)
    dist = torch.distributions.Poisson(torch.as_tensor(mu)[None, :, None])
    crps = count_crps(dist, torch.as_tensor(y, dtype=torch.float64)[None, :, None])
    out = scores(y, mu, poisson.ppf(LEVELS[0]), poisson.ppf(LEVELS[1]), -poisson.logpmf(y),
                 crps[0, :, 0].numpy())
    out["alpha"] = float(search.best_params_["poissonregressor__alpha"])
    return out


def idw_scores(train, test) -> dict:
    """IDW of log(1 + count) within each year (bsatnp's IDW family via Predictor)."""
    predictor = Predictor(IDW(dim_s=2))
    parts = {key: np.empty(len(test)) for key in ("mean", "lower", "upper")}
    for year in sorted(test["year"].unique()):
        rows = np.flatnonzero(test["year"].to_numpy() == year)
        out = predictor.predict(train[train["year"] == year], test.iloc[rows], values="cnt",
                                space=("lon", "lat"), crs="lonlat", value_transform="log1p",
                                neighbours=None, interval=0.9)
        parts["mean"][rows] = out["mean"].to_numpy()
        parts["lower"][rows], parts["upper"][rows] = out["lower"], out["upper"]
    return scores(test["cnt"].to_numpy(), parts["mean"], parts["lower"], parts["upper"])


def summary(per_row: dict[str, dict]) -> dict:
    """Mean ± s.e. per method and metric; paired differences to bsatnp (pooled if run)."""
    reference = "bsatnp_pooled" if "bsatnp_pooled" in per_row else "bsatnp"
    out = {}
    for method, rows in per_row.items():
        entry = {}
        for metric, values in rows.items():
            if not isinstance(values, np.ndarray):
                entry[metric] = values
                continue
            entry[metric] = {"mean": float(values.mean()),
                             "se": float(values.std(ddof=1) / math.sqrt(len(values)))}
            base = per_row.get(reference, {}).get(metric)
            if method != reference and isinstance(base, np.ndarray):
                diff = values - base
                entry[metric]["minus_" + reference] = {
                    "mean": float(diff.mean()),
                    "se": float(diff.std(ddof=1) / math.sqrt(len(diff)))}
        out[method] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="counts",
                        help="a shipped count model or a checkpoint (%(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/wren_counts.json"))
    args = parser.parse_args()
    import pandas as pd

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # envelope notes, per year
    data = pd.read_csv(DATA).dropna(subset=["cnt"]).reset_index(drop=True)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    pooled: dict[str, dict[str, list]] = {m: {} for m in methods}
    per_seed = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        test_rows = rng.random(len(data)) < args.test_fraction
        train, test = data[~test_rows], data[test_rows]
        results = {}
        for method in methods:
            if method.startswith("bsatnp"):
                results[method] = bsatnp_scores(args.model, train, test,
                                                pooled=method == "bsatnp_pooled")
            elif method == "idw":
                results[method] = idw_scores(train, test)
            else:
                results[method] = glm_scores(method, train, test)
            for metric, values in results[method].items():
                pooled[method].setdefault(metric, []).append(values)
        per_seed[seed] = summary(results)
        print(f"seed {seed}: {len(train)} training rows, {len(test)} test rows")
        for method in methods:
            line = ", ".join(f"{k} {v['mean']:.3f}" for k, v in per_seed[seed][method].items()
                             if isinstance(v, dict))
            print(f"  {method:11s} {line}")
    merged = {m: {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else v)
                  for k, v in rows.items()} for m, rows in pooled.items()}
    record = {"meta": run_meta(args.threads, model=args.model, seeds=seeds,
                               test_fraction=args.test_fraction, rows=len(data)),
              "pooled": summary(merged), "per_seed": per_seed}
    print("pooled over seeds (mean ± s.e. over test rows):")
    for method, entry in record["pooled"].items():
        line = ", ".join(f"{k} {v['mean']:.3f} ± {v['se']:.3f}" for k, v in entry.items()
                         if isinstance(v, dict))
        print(f"  {method:11s} {line}")
    write_json(args.out, record)


if __name__ == "__main__":
    main()
