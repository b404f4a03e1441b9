"""Real-data league table: bsatnp against the methods users run today, side by side.

    python benchmarks/real_data.py --dataset heaton
    python benchmarks/real_data.py --dataset heaton --methods bsatnp_local,idw --limit 5000

Datasets (read in place from ``../shared/data``, never copied):

- ``heaton``: the simulated dataset of the Heaton et al. (2019) competition; training cells
  are those with ``MaskTemp`` (105,569), test cells those without (44,431, in cloud-shaped
  gaps), truth ``TrueTemp``. The competition's published test RMSEs are printed beside.
- ``era5_half``, ``era5_block``: ERA5 2 m temperature over the UK (33 × 49 cells of 0.25°),
  ``--frames`` 6-hourly frames from day 26 on, each its own field: a random half of the
  cells hidden, or a contiguous 12 × 16-cell block hidden.
- ``beijing_spatial``: PM2.5 (µg/m³) at the 12 Beijing stations, ``--frames`` hours spread
  over the protocol's test period (the last 10 % of the record) with all 12 reported; each
  hour gives 12 fields, one station predicted from the other 11.

Methods, all given the same coordinates (km on an equirectangular map of the region) and
the same observed rows, field by field (variograms and GP hyperparameters fitted per field):

- ``bsatnp_local``: a shipped model (``--model``) with local conditioning (``--neighbours``);
- ``bsatnp_tuned``: that model fine-tuned on the training rows with ``gap`` tasks
  (``--tune-steps``, tasks of ``--neighbours`` context rows; the run in
  ``--runs``/<dataset>_gap<steps>[_k<neighbours>]_<model>_<sha256 of its file, 8 digits>,
  ``_k`` only for K other than 512, resumes if it is there, or
  its best state is used once finished), then predicting with local conditioning. The
  training rows (``--tune-rows``): Heaton's observed cells; for ERA5 the 6-hourly frames
  of days 1-25 (``earlier``, the default; ``group="frame"``: each task from one frame; run
  ``era5_gap<steps>_...``, shared by both ERA5 datasets) or the observed cells of the test
  frames themselves (``observed``, as kriging fits its variogram on them; run
  ``<dataset>_observed_gap<steps>_...``); for Beijing the hours of the protocol's training
  period (its first 80 %) with all 12 stations, each task one station from the other 11
  (``group="hour"``; run ``beijing_gap<steps>_...``);
- ``bsatnp_chosen``: local conditioning with the neighbourhood size chosen per field from
  ``--candidates`` on the field's own observed rows (:func:`bsatnp.holdout.choose_neighbours`:
  10 % of them held out in the shape of the dataset's test rows, ``HOLDOUT``, and predicted
  from the rest; the lowest CRPS wins); the chosen sizes are in the JSON;
- ``bsatnp_global``: the same model conditioned on ``--global-context`` random rows (the
  README path of the last release);
- ``kriging``: ordinary kriging (PyKrige) of each tile of test points from its local
  neighbourhood (``--kriging-points`` nearest rows), with a variogram (``--variogram``)
  fitted by GSTools on a random subsample (``--fit-points``);
- ``gp``: an exact GP (scikit-learn, Matérn ν = 3/2 + constant + white noise) with
  hyperparameters fitted by maximum likelihood on a random subsample, predicting each tile
  from its local neighbourhood;
- ``idw``, ``knn``: inverse-distance weighting (power 2) and the mean of the k nearest
  (scikit-learn ``KNeighborsRegressor``), std from the leave-one-out residuals.

Metrics: RMSE, MAE, CRPS (Gaussian), 95% coverage and mean interval width, wall time and
peak RSS (each method runs in its own forked process); with ``--threshold T`` also the
exceedance probability ``P(value > T)`` of every method's predictive against what happened
(Brier score, the base rate's, and reliability bins). Writes
``benchmarks/results/real_data_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import run_forked, run_meta, write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PUBLISHED = {"heaton": {"SPDE (INLA)": 0.86, "LatticeKrig": 0.87, "Periodic embedding": 0.91,
                        "Gapfill": 1.00, "laGP": 1.11}}
METHODS = ("bsatnp_tuned", "bsatnp_chosen", "bsatnp_local", "bsatnp_global", "kriging", "gp",
           "idw", "knn")


Field = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Observed coordinates (km) and values, test coordinates and truth of one field."""


def _km(lon: np.ndarray, lat: np.ndarray, lat0: float) -> np.ndarray:
    """Equirectangular km around latitude ``lat0`` (degrees)."""
    return np.stack([lon * 111.32 * math.cos(math.radians(lat0)), lat * 110.57], -1)


def heaton(args: argparse.Namespace) -> list[Field]:
    """The competition's split: one field, test cells in the cloud-shaped gaps."""
    import pandas as pd

    frame = pd.read_csv(SHARED / "heaton_simulated" / "all_simulated_temps.csv.gz")
    xy = _km(frame["Lon"].to_numpy(), frame["Lat"].to_numpy(), float(frame["Lat"].mean()))
    train = frame["MaskTemp"].notna().to_numpy()
    return [(xy[train], frame["MaskTemp"].to_numpy()[train], xy[~train],
             frame["TrueTemp"].to_numpy()[~train])]


def era5(args: argparse.Namespace, block: bool) -> list[Field]:
    """6-hourly frames of days 26-31 of the ERA5 UK month (K): a random half of the cells
    hidden (``block=False``), or a contiguous 12 × 16-cell block (``block=True``)."""
    import gzip

    from scipy.io import netcdf_file

    path = SHARED / "era5" / "era5_t2m_uk_2019-03_hourly.nc.gz"
    with gzip.open(path) as raw, netcdf_file(raw, mmap=False) as nc:
        t2m = np.array(nc.variables["t2m"][:], dtype=np.float64)
        lat = np.array(nc.variables["latitude"][:], dtype=np.float64)
        lon = np.array(nc.variables["longitude"][:], dtype=np.float64)
    glon, glat = np.meshgrid(lon, lat)
    xy = _km(glon.ravel(), glat.ravel(), float(lat.mean()))
    rng = np.random.default_rng(args.seed)
    fields = []
    for step in range(25 * 24, len(t2m), 6)[: args.frames]:
        values = t2m[step].ravel()
        if block:
            i0, j0 = rng.integers(0, len(lat) - 12), rng.integers(0, len(lon) - 16)
            hidden = np.zeros(glat.shape, dtype=bool)
            hidden[i0:i0 + 12, j0:j0 + 16] = True
            hidden = hidden.ravel()
        else:
            hidden = rng.permutation(len(values)) < len(values) // 2
        fields.append((xy[~hidden], values[~hidden], xy[hidden], values[hidden]))
    return fields


def _beijing_wide() -> tuple[Any, np.ndarray]:
    """PM2.5 by hour (rows, every station reported) and station (columns), and the
    stations' km coordinates."""
    import pandas as pd

    folder = SHARED / "beijing_air_quality"
    table = pd.concat([pd.read_csv(p) for p in sorted(folder.glob("PRSA_Data_*.csv*"))])
    table["time"] = pd.to_datetime(table[["year", "month", "day", "hour"]])
    wide = table.pivot(index="time", columns="station", values="PM2.5").dropna()
    stations = pd.read_csv(folder / "stations.csv").set_index("station").loc[wide.columns]
    return wide, _km(stations["lon"].to_numpy(), stations["lat"].to_numpy(),
                     float(stations["lat"].mean()))


def beijing_spatial(args: argparse.Namespace) -> list[Field]:
    """Each of ``--frames`` hours spread over the last 10 % of the record (the protocol's
    test period) with PM2.5 at all 12 stations gives 12 fields: one station predicted from
    the other 11."""
    wide, xy = _beijing_wide()
    wide = wide[wide.index >= wide.index[0] + 0.9 * (wide.index[-1] - wide.index[0])]
    hours = wide.iloc[np.linspace(0, len(wide) - 1, args.frames).astype(int)]
    fields = []
    for values in hours.to_numpy(np.float64):
        for out in range(len(xy)):
            keep = np.arange(len(xy)) != out
            fields.append((xy[keep], values[keep], xy[~keep], values[~keep]))
    return fields


DATASETS = {"heaton": heaton, "era5_half": lambda a: era5(a, block=False),
            "era5_block": lambda a: era5(a, block=True), "beijing_spatial": beijing_spatial}


# ------------------------------------------------------------------------- methods
def bsatnp_predict(args: argparse.Namespace, xy, f, xy_test, neighbours) -> tuple:
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    predictor = _shipped(args.model)
    obs = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "v": f})
    if neighbours is None:
        rows = np.random.default_rng(args.seed).choice(
            len(obs), min(len(obs), args.global_context), replace=False)
        obs = obs.iloc[rows]
    out = predictor.predict(obs, pd.DataFrame({"x": xy_test[:, 0], "y": xy_test[:, 1]}),
                            values="v", space=("x", "y"), neighbours=neighbours,
                            progress=False)
    return out["mean"].to_numpy(np.float64), out["std"].to_numpy(np.float64)


@functools.lru_cache(maxsize=1)
def _shipped(name: str) -> Any:
    """A shipped model by name, or a saved predictor's file."""
    from bsatnp import Predictor
    from bsatnp.pretrained import checkpoint_path

    return Predictor.load(checkpoint_path(name))


def era5_training(args: argparse.Namespace) -> Any:
    """ERA5 frames before the test days (6-hourly, days 1-25), one field per ``frame``."""
    import gzip

    import pandas as pd
    from scipy.io import netcdf_file

    path = SHARED / "era5" / "era5_t2m_uk_2019-03_hourly.nc.gz"
    with gzip.open(path) as raw, netcdf_file(raw, mmap=False) as nc:
        t2m = np.array(nc.variables["t2m"][: 25 * 24 : 6], dtype=np.float64)
        lat = np.array(nc.variables["latitude"][:], dtype=np.float64)
        lon = np.array(nc.variables["longitude"][:], dtype=np.float64)
    glon, glat = np.meshgrid(lon, lat)
    xy = _km(glon.ravel(), glat.ravel(), float(lat.mean()))
    return pd.DataFrame({"x": np.tile(xy[:, 0], len(t2m)), "y": np.tile(xy[:, 1], len(t2m)),
                         "v": t2m.reshape(-1), "frame": np.repeat(np.arange(len(t2m)), len(xy))})


def beijing_training(args: argparse.Namespace) -> Any:
    """PM2.5 at the 12 Beijing stations in the hours of the protocol's training period (the
    first 80 % of the record) with all 12 reported, one field per ``hour``."""
    import pandas as pd

    wide, xy = _beijing_wide()
    wide = wide[wide.index < wide.index[0] + 0.8 * (wide.index[-1] - wide.index[0])]
    values = wide.to_numpy(np.float64)
    return pd.DataFrame({"x": np.tile(xy[:, 0], len(values)),
                         "y": np.tile(xy[:, 1], len(values)), "v": values.reshape(-1),
                         "hour": np.repeat(np.arange(len(values)), len(xy))})


def observed_rows(fields: list[Field]) -> Any:
    """The observed rows of every field, one group per ``field``."""
    import pandas as pd

    return pd.DataFrame({"x": np.concatenate([field[0][:, 0] for field in fields]),
                         "y": np.concatenate([field[0][:, 1] for field in fields]),
                         "v": np.concatenate([field[1] for field in fields]),
                         "field": np.repeat(np.arange(len(fields)),
                                            [len(field[1]) for field in fields])})


def tuning_name(args: argparse.Namespace) -> str:
    """The name of the dataset's fine-tuning rows (the start of its run directory)."""
    if args.dataset in ("heaton", "beijing_spatial"):
        return args.dataset.removesuffix("_spatial")
    return f"{args.dataset}_observed" if args.tune_rows == "observed" else "era5"


def tuning_rows(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The fine-tuning table and its field column (module doc; read only to fine-tune)."""
    if args.dataset == "heaton":
        return observed_rows(heaton(args)), None
    if args.dataset == "beijing_spatial":
        return beijing_training(args), "hour"
    if args.tune_rows == "observed":
        return observed_rows(DATASETS[args.dataset](args)), "field"
    return era5_training(args), "frame"


@functools.cache
def _digest(name: str) -> str:
    """The first 8 hex digits of the SHA-256 of a model's file: a fine-tuning run resumes
    only from the weights it started from (a reshipped model starts a new run)."""
    import hashlib

    from bsatnp.pretrained import checkpoint_path

    return hashlib.sha256(Path(checkpoint_path(name)).read_bytes()).hexdigest()[:8]


_TUNED: dict[Path, Any] = {}
"""Fine-tuned predictors by run directory (ERA5 predicts 12 fields with one)."""


def tuned(args: argparse.Namespace) -> Any:
    """The shipped model fine-tuned with ``gap`` tasks (resumable) on the dataset's training
    rows (:func:`tuning_rows`), each task from one field where there are several."""
    import torch

    from bsatnp import Predictor
    from bsatnp.io.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    base = f"_{Path(args.model).stem}_{_digest(args.model)}"  # a run per base model's weights
    size = "" if args.neighbours == 512 else f"_k{args.neighbours}"  # tasks of that size
    out = Path(args.runs) / f"{tuning_name(args)}_gap{args.tune_steps}{size}{base}"
    resume = (out / "last.safetensors").is_file()
    if out not in _TUNED and resume and (out / "best.safetensors").is_file() and \
            load_checkpoint(out / "last.safetensors").step >= args.tune_steps:
        _TUNED[out] = Predictor.load(out / "best.safetensors")  # finished: its best state
    if out in _TUNED:
        return _TUNED[out]
    table, group = tuning_rows(args)
    _TUNED[out] = _shipped(args.model).finetune(
        table, values="v", space=("x", "y"), split="gap", n_ctx=args.neighbours,
        n_test=args.tune_test, steps=args.tune_steps, lr=args.tune_lr,
        warmup_steps=args.tune_steps // 20, out_dir=out, resume=resume,
        progress=not args.quiet, seed=args.seed, group=group)
    return _TUNED[out]


def bsatnp_tuned(args: argparse.Namespace, xy, f, xy_test) -> tuple:
    import pandas as pd

    predictor = tuned(args)
    out = predictor.predict(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "v": f}),
                            pd.DataFrame({"x": xy_test[:, 0], "y": xy_test[:, 1]}),
                            progress=False)
    return out["mean"].to_numpy(np.float64), out["std"].to_numpy(np.float64)


VARIOGRAMS = ("exponential", "spherical", "gaussian", "matern")


def fit_variogram(xy, f, model: str, n_points: int, seed: int) -> Any:
    """A GSTools variogram model (with nugget) fitted to the empirical variogram of
    ``n_points`` random rows, lags up to a quarter of their bounding box's diagonal (half,
    in fewer bins, for fewer than 100 rows).

    (PyKrige's own fit uses every lag up to the largest distance and missed the range by
    a factor of 3 on a third of the small known fields of the tests.)
    """
    import gstools as gs

    rows = np.random.default_rng(seed).choice(len(f), min(len(f), n_points), replace=False)
    diagonal = float(np.hypot(*(xy[rows].max(0) - xy[rows].min(0))))
    few = len(rows) < 100  # a handful of stations: longer lags, fewer bins
    bins = max(4, len(rows) // 3) if few else 30
    edges = np.linspace(0, diagonal / (2 if few else 4), bins + 1)
    centres, gamma = gs.vario_estimate(xy[rows].T, f[rows], edges)
    fitted = {"exponential": gs.Exponential, "spherical": gs.Spherical,
              "gaussian": gs.Gaussian, "matern": gs.Matern}[model](dim=2)
    for nugget in (True, False):  # a handful of points may defeat the nugget fit
        try:
            fitted.fit_variogram(centres, gamma, nugget=nugget)
            return fitted
        except RuntimeError:
            continue
    fitted.var, fitted.len_scale = max(float(np.var(f[rows])), 1e-12), diagonal / 4
    return fitted  # no fit converged: the sample variance and a quarter of the extent


def kriging(args: argparse.Namespace, xy, f, xy_test) -> tuple:
    from pykrige.ok import OrdinaryKriging

    from bsatnp.data.neighbours import NeighbourSearch

    variogram = fit_variogram(xy, f, args.variogram, args.fit_points, args.seed)
    print(f"  kriging: {variogram}", flush=True)
    mean, std = np.empty(len(xy_test)), np.empty(len(xy_test))
    for tile in NeighbourSearch(xy, args.kriging_points).tiles(xy_test):
        c = tile.context
        local = OrdinaryKriging(xy[c, 0], xy[c, 1], f[c], variogram_model=variogram)
        m, v = local.execute("points", xy_test[tile.targets, 0], xy_test[tile.targets, 1])
        mean[tile.targets] = m
        std[tile.targets] = np.sqrt(np.maximum(np.asarray(v), 0))
    return mean, std


def fit_gp_kernel(xy, f, n_points: int, seed: int) -> Any:
    """scikit-learn's maximum-likelihood Matérn-3/2 + white kernel on ``n_points`` rows
    of the standardised values."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rows = np.random.default_rng(seed).choice(len(f), min(len(f), n_points), replace=False)
    kernel = ConstantKernel(1.0) * Matern(length_scale=10.0, nu=1.5) + WhiteKernel(0.01)
    fitted = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=2,
                                      random_state=seed)
    fitted.fit(xy[rows], (f[rows] - f.mean()) / f.std())
    return fitted.kernel_


def gp(args: argparse.Namespace, xy, f, xy_test) -> tuple:
    from sklearn.gaussian_process import GaussianProcessRegressor

    from bsatnp.data.neighbours import NeighbourSearch

    shift, scale = f.mean(), f.std()
    kernel = fit_gp_kernel(xy, f, args.fit_points, args.seed)
    mean, std = np.empty(len(xy_test)), np.empty(len(xy_test))
    search = NeighbourSearch(xy, args.neighbours)
    for tile in search.tiles(xy_test):
        local = GaussianProcessRegressor(kernel, optimizer=None)
        local.fit(xy[tile.context], (f[tile.context] - shift) / scale)
        m, s = local.predict(xy_test[tile.targets], return_std=True)
        mean[tile.targets], std[tile.targets] = m * scale + shift, s * scale
    print(f"  gp: fitted kernel {kernel}", flush=True)
    return mean, std


def neighbours_average(args: argparse.Namespace, xy, f, xy_test, weights: str) -> tuple:
    from sklearn.neighbors import KNeighborsRegressor

    k = 10
    knn = KNeighborsRegressor(n_neighbors=k, weights=weights).fit(xy, f)
    loo = KNeighborsRegressor(n_neighbors=k + 1, weights=weights).fit(xy, f)
    rows = np.random.default_rng(args.seed).choice(len(f), min(len(f), 5000), replace=False)
    dist, index = loo.kneighbors(xy[rows])  # leave-one-out: drop each point itself
    w = (1 / np.maximum(dist[:, 1:], 1e-12) ** 2 if weights == "distance"
         else np.ones((len(rows), k)))
    residual = f[rows] - (w * f[index[:, 1:]]).sum(1) / w.sum(1)
    std = float(np.sqrt(np.mean(residual ** 2)))
    return knn.predict(xy_test), np.full(len(xy_test), std)


HOLDOUT = {"heaton": ("gap", 5000, 1), "era5_half": ("random", None, 5),
           "era5_block": ("gap", 192, 5), "beijing_spatial": ("random", None, 1)}
"""The shape of each dataset's test rows (geometry, rows per hole; then folds: 5 where a
frame's holdout is small), which ``bsatnp_chosen``
holds out of the observed rows: Heaton's test cells lie in cloud-shaped gaps (706 of them,
most of a few cells, but a test cell's gap holds 21,040 cells on average), ERA5 hides a
random half or one 12 × 16 block (192 cells)."""


def bsatnp_chosen(args: argparse.Namespace, xy, f, xy_test) -> tuple:
    import pandas as pd
    import torch

    from bsatnp.holdout import choose_neighbours

    torch.set_num_threads(args.threads)
    obs = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "v": f})
    geometry, hole_size, folds = HOLDOUT[args.dataset]
    choice = choose_neighbours(_shipped(args.model), obs, geometry=geometry, hole_size=hole_size,
                               folds=folds,
                               candidates=[int(k) for k in args.candidates.split(",")],
                               seed=args.seed, values="v", space=("x", "y"))
    if not args.quiet:
        print(f"  bsatnp_chosen: K = {choice.neighbours} "
              f"(CRPS {', '.join(f'{k}: {v:.4f}' for k, v in choice.crps.items())})")
    mean, std = bsatnp_predict(args, xy, f, xy_test, choice.neighbours)
    return mean, std, {"neighbours": choice.neighbours, "holdout_crps": choice.crps}


def run_method(name: str, args: argparse.Namespace, field: Field) -> tuple:
    """``(mean, std)`` of one method on one field, or ``(mean, std, notes)``."""
    xy, f, xy_test, _ = field
    if name == "bsatnp_chosen":
        return bsatnp_chosen(args, xy, f, xy_test)
    if name == "bsatnp_local":
        return bsatnp_predict(args, xy, f, xy_test, args.neighbours)
    if name == "bsatnp_tuned":
        return bsatnp_tuned(args, xy, f, xy_test)
    if name == "bsatnp_global":
        return bsatnp_predict(args, xy, f, xy_test, None)
    if name == "kriging":
        return kriging(args, xy, f, xy_test)
    if name == "gp":
        return gp(args, xy, f, xy_test)
    return neighbours_average(args, xy, f, xy_test, "distance" if name == "idw" else "uniform")


# ------------------------------------------------------------------------- scoring
def exceedance_scores(mean: np.ndarray, std: np.ndarray, truth: np.ndarray,
                      threshold: float, bins: int = 10) -> dict[str, Any]:
    """``P(value > threshold)`` from the Gaussian predictive against what happened: the
    Brier score, that of the base rate (a constant forecast), and the reliability diagram's
    bins (mean forecast probability, observed frequency, count)."""
    from scipy.stats import norm

    p = norm.sf((threshold - mean) / np.maximum(std, 1e-9))
    happened = (truth > threshold).astype(np.float64)
    rate = float(happened.mean())
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    reliability = [{"bin": [float(edges[b]), float(edges[b + 1])], "n": int((which == b).sum()),
                    "forecast": float(p[which == b].mean()) if (which == b).any() else None,
                    "observed": float(happened[which == b].mean()) if (which == b).any()
                    else None} for b in range(bins)]
    return {"threshold": threshold, "brier": float(np.mean((p - happened) ** 2)),
            "brier_base_rate": float(np.mean((rate - happened) ** 2)), "base_rate": rate,
            "reliability": reliability}


def scores(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from scipy.stats import norm

    std = np.maximum(std, 1e-9)
    z = (truth - mean) / std
    crps = std * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))
    half = norm.ppf(0.975) * std
    return {"rmse": float(np.sqrt(np.mean((mean - truth) ** 2))),
            "mae": float(np.mean(np.abs(mean - truth))), "crps": float(np.mean(crps)),
            "coverage95": float(np.mean(np.abs(truth - mean) <= half)),
            "width95": float(np.mean(2 * half))}


def _predict_fields(name: str, args: argparse.Namespace, fields: list[Field]) -> tuple:
    """Means, stds, wall seconds and per-field notes (if any) of one method over every field."""
    start = time.perf_counter()
    predictions = [run_method(name, args, field) for field in fields]
    mean = np.concatenate([p[0] for p in predictions])
    std = np.concatenate([p[1] for p in predictions])
    notes = [p[2] for p in predictions if len(p) > 2]
    return mean, std, time.perf_counter() - start, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="heaton")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--model", default="spatial",
                        help="a shipped bsatnp model, or a saved predictor's file")
    parser.add_argument("--neighbours", type=int, default=512)
    parser.add_argument("--candidates", default="128,256,512,1024,2048",
                        help="neighbourhood sizes bsatnp_chosen chooses from")
    parser.add_argument("--global-context", type=int, default=4000)
    parser.add_argument("--kriging-points", type=int, default=128)
    parser.add_argument("--variogram", default="exponential", choices=VARIOGRAMS)
    parser.add_argument("--fit-points", type=int, default=2000,
                        help="random training rows the variogram / GP hyperparameters are "
                             "fitted on")
    parser.add_argument("--tune-steps", type=int, default=4000)
    parser.add_argument("--tune-lr", type=float, default=3e-4)
    parser.add_argument("--tune-test", type=int, default=256,
                        help="test rows per fine-tuning task (at most; Beijing: 1)")
    parser.add_argument("--tune-rows", choices=("earlier", "observed"), default="earlier",
                        help="ERA5 fine-tuning rows: days 1-25, or the test frames' observed "
                             "cells")
    parser.add_argument("--runs", default="runs/real_data", help="fine-tuning runs")
    parser.add_argument("--tune-only", action="store_true",
                        help="only fine-tune (or resume fine-tuning), then stop")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--limit", type=int,
                        help="score only this many random test rows (of the first field)")
    parser.add_argument("--frames", type=int, default=24,
                        help="ERA5 frames, or Beijing hours (each 12 fields)")
    parser.add_argument("--threshold", type=float,
                        help="also score P(value > threshold) of every method's Gaussian "
                             "predictive: Brier score and reliability bins")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default: "
                        "benchmarks/results/real_data_<dataset>.json)")
    args = parser.parse_args()
    fields = DATASETS[args.dataset](args)
    methods = args.methods.split(",")
    if args.tune_only:
        tuned(args)
        return
    if args.limit:
        xy, f, xy_test, truth = fields[0]
        rows = np.sort(np.random.default_rng(args.seed + 1).choice(len(truth), args.limit,
                                                                   replace=False))
        fields = [(xy, f, xy_test[rows], truth[rows])] + fields[1:]
    truth = np.concatenate([field[3] for field in fields])
    n_obs = sum(len(field[1]) for field in fields)
    print(f"{args.dataset}: {len(fields)} field(s), {n_obs:,} observed rows, "
          f"{len(truth):,} test rows", flush=True)
    results = {}
    for name in methods:
        (mean, std, seconds, notes), rss = run_forked(name, _predict_fields, name, args,
                                                      fields)
        results[name] = {**scores(mean, std, truth), "seconds": seconds, "peak_rss_mb": rss,
                         **({"fields": notes} if notes else {})}
        if args.threshold is not None:
            results[name]["exceedance"] = exceedance_scores(mean, std, truth, args.threshold)
        row = results[name]
        print(f"{name:<14} RMSE {row['rmse']:.3f}  MAE {row['mae']:.3f}  CRPS {row['crps']:.3f}"
              f"  cov95 {row['coverage95']:.3f}  width {row['width95']:.2f}  "
              f"{seconds:7.1f} s  {rss:6.0f} MiB", flush=True)
        if args.threshold is not None:
            ex = row["exceedance"]
            print(f"{'':<14} P(> {args.threshold:g}): Brier {ex['brier']:.4f} (base rate "
                  f"{ex['base_rate']:.3f}: {ex['brier_base_rate']:.4f})", flush=True)
    for method, rmse in PUBLISHED.get(args.dataset, {}).items():
        print(f"published  {method:<20} RMSE {rmse:.2f}")
    out = args.out or Path(__file__).parent / "results" / f"real_data_{args.dataset}.json"
    write_json(out, {"meta": run_meta(threads=args.threads, **{
        k: v for k, v in vars(args).items() if k not in ("out", "threads")}),
        "n_fields": len(fields), "n_observed": n_obs, "n_test": len(truth), "results": results,
        "published_rmse": PUBLISHED.get(args.dataset, {})})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
