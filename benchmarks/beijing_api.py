"""Beijing air quality through the own-data API: RMSE and MAE in µg/m³ (PROTOCOLS §8).

The test windows of the ``beijing`` task (the same ones ``compare_models.py --task beijing``
scores) are handed to :class:`bsatnp.Predictor` as pandas DataFrames in physical units:
station latitude/longitude in degrees, timestamps as datetimes, the 27 covariates as
recorded, PM2.5 and PM10 in µg/m³. Each trained model is wrapped with a
:class:`bsatnp.data.Normalizer` equal to the protocol's min–max scaling (fitted on the
training rows), so the API reproduces the model's inputs, and its predictions come back in
µg/m³. Persistence (the station's latest reading), IDW and kNN are scored on the same
windows. As a check, the API's means are compared with the model applied to the scaled
batch directly.

Usage (after the comparison has trained the models):
    python benchmarks/beijing_api.py --runs runs/beijing --batches 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import run_meta, write_json

from bsatnp import Predictor
from bsatnp.baselines import calibrated_local_averages
from bsatnp.data import Normalizer, Schema
from bsatnp.experiment import load_experiment
from bsatnp.io.checkpoint import load_model
from bsatnp.tasks import eval_batches
from bsatnp.tasks.beijing import FEATURES

POLLUTANTS = ("pm25", "pm10")


def protocol_normalizer(task) -> tuple[Schema, Normalizer]:
    """The protocol's min–max scaling as a schema and normaliser of physical columns."""
    data = task.data()
    span = lambda lo, hi: tuple(float(v) for v in np.where(hi > lo, hi - lo, 1.0))  # noqa: E731
    epoch = float(data.start.astype("datetime64[s]").astype(np.int64))
    schema = Schema(values=POLLUTANTS, space=("lat", "lon"), time="time", time_kind="datetime",
                    covariates=FEATURES, units=("ug/m3", "ug/m3"))
    normalizer = Normalizer(
        value_shift=tuple(map(float, data.f_lo)), value_scale=span(data.f_lo, data.f_hi),
        space_shift=tuple(map(float, data.s_lo)), space_scale=span(data.s_lo, data.s_hi),
        time_shift=epoch + float(data.t_lo[0]), time_scale=span(data.t_lo, data.t_hi)[0],
        covariate_shift=tuple(map(float, data.x_lo)), covariate_scale=span(data.x_lo, data.x_hi))
    return schema, normalizer


def frame(batch, b: int, part: str, task, normalizer: Normalizer) -> pd.DataFrame:
    """Rows ``part`` (``ctx``/``test``) of task ``b`` in physical units."""
    data = task.data()
    unscale = lambda v, shift, scale: shift + v.double().numpy() * np.asarray(scale)  # noqa: E731
    s = unscale(getattr(batch, f"s_{part}")[b], normalizer.space_shift, normalizer.space_scale)
    t = unscale(getattr(batch, f"t_{part}")[b], normalizer.time_shift, (normalizer.time_scale,))
    x = unscale(getattr(batch, f"x_{part}")[b], normalizer.covariate_shift,
                normalizer.covariate_scale)
    out = pd.DataFrame(x, columns=list(FEATURES))
    out.insert(0, "time", np.round(t[:, 0]).astype("datetime64[s]"))
    out.insert(0, "lon", s[:, 1])
    out.insert(0, "lat", s[:, 0])
    if part == "ctx":
        f = data.f_lo + batch.f_ctx[b].double().numpy() * (data.f_hi - data.f_lo)
        out["pm25"], out["pm10"] = f[:, 0], f[:, 1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/beijing")
    parser.add_argument("--batches", type=int, default=50, help="test batches (32 windows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/beijing_api.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    experiment = load_experiment("beijing")
    task = experiment.task
    schema, normalizer = protocol_normalizer(task)
    runs = sorted(p for p in Path(args.runs).iterdir() if (p / "last.safetensors").is_file())
    if not runs:
        sys.exit(f"no trained runs in {args.runs}")
    predictors = {p.name: Predictor(load_model(p / "last.safetensors"), schema, normalizer)
                  for p in runs}
    validation = eval_batches(task, 16, experiment.eval.val_seed, split="valid")
    baselines = calibrated_local_averages(["persistence", "idw", "knn"], validation)
    lo, hi = task.target_scale()
    errors: dict[str, list[np.ndarray]] = {name: [] for name in [*predictors, *baselines]}
    check = 0.0
    for batch in eval_batches(task, args.batches, experiment.eval.seed, split="test"):
        truth = task.to_physical(batch.f_test.double().numpy())  # [B, 84, 2]
        for name, model in baselines.items():
            errors[name].append(task.to_physical(model(batch).mean.double().numpy()) - truth)
        for name, predictor in predictors.items():
            with torch.no_grad():
                direct = task.to_physical(predictor.model(batch).mean.double().numpy())
            means = []
            for b in range(batch.batch_size):
                out = predictor.predict(frame(batch, b, "ctx", task, normalizer),
                                        frame(batch, b, "test", task, normalizer))
                means.append(out[["pm25_mean", "pm10_mean"]].to_numpy())
            api = np.stack(means)
            check = max(check, float(np.abs(api - direct).max()))
            errors[name].append(api - truth)
    rows = {}
    for name, batches in errors.items():
        per_batch = np.stack(batches)  # [n, B, 84, 2]
        rmse = np.sqrt((per_batch**2).mean(axis=(1, 2)))  # [n, 2]
        mae = np.abs(per_batch).mean(axis=(1, 2))
        se = lambda a: a.std(0, ddof=1) / np.sqrt(len(a))  # noqa: E731
        rows[name] = {f"{metric}_{p}": {"mean": float(a.mean(0)[j]), "se": float(se(a)[j])}
                      for metric, a in (("rmse", rmse), ("mae", mae))
                      for j, p in enumerate(POLLUTANTS)}
    print(f"{args.batches} test batches × {task.batch_size} windows × {task.n_test} rows; "
          f"largest |API mean − direct model mean| = {check:.2e} µg/m³\n")
    print("| model | RMSE PM2.5 | RMSE PM10 | MAE PM2.5 | MAE PM10 |\n|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [f"{row[k]['mean']:.1f} ± {row[k]['se']:.1f}"
                 for k in ("rmse_pm25", "rmse_pm10", "mae_pm25", "mae_pm10")]
        print(f"| {name} | {' | '.join(cells)} |")
    write_json(args.out, {
        "meta": run_meta(batches=args.batches, max_api_vs_direct_ugm3=check,
                         target_lo=lo.tolist(), target_hi=hi.tolist()), "models": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
