"""The README's counts path, end to end, on synthetic districts with a known risk surface.

A log-Gaussian risk surface (1 case per 1,000 people times exp of a GP with standard
deviation 0.5 and a 60 km lengthscale) is drawn at 300 district centres in lon/lat degrees,
each with a population between 2,000 and 200,000 and Poisson cases. Four fifths of the
districts are observed (through a CSV); the README's lines predict the rest. Checked: the
outputs are per person (``mean × population = expected_count``), the rates beat the
overall rate of the observed districts, the 90 % intervals of the held-out observed rates
cover about 90 %, ``P(rate > 2 per 1,000)`` beats the base rate's Brier score, and the
regional totals of the joint samples cover the regions' held-out totals.
"""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyproj")

from test_own_data_readme import haversine_km  # noqa: E402

from bsatnp import Predictor, aggregate  # noqa: E402


def synthetic_districts(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-3.0, 1.0, n), rng.uniform(51.0, 54.0, n)
    points = np.stack([lon, lat], -1)
    cov = 0.25 * np.exp(-0.5 * (haversine_km(points, points) / 60.0) ** 2)
    field = np.linalg.cholesky(cov + 1e-6 * np.eye(n)) @ rng.standard_normal(n)
    population = np.exp(rng.uniform(np.log(2e3), np.log(2e5), n)).round()
    risk = 1e-3 * np.exp(field)
    frame = pd.DataFrame({"lon": lon, "lat": lat, "population": population,
                          "cases": rng.poisson(population * risk),
                          "region": np.where(lat > 52.5, "north", "south")})
    held_out = rng.random(n) < 0.2
    return frame[~held_out], frame[held_out].reset_index(drop=True), risk[held_out]


def test_readme_counts_path_rates_interval_exceedance_and_areal_totals(tmp_path):
    covered, errors, baseline, brier, base_brier, totals_covered = [], [], [], [], [], []
    for seed in range(3):
        observed, held_out, true_risk = synthetic_districts(seed)
        observed.to_csv(tmp_path / "districts.csv", index=False)
        held_out.drop(columns="cases").to_csv(tmp_path / "new_districts.csv", index=False)
        # --- the README's lines ---
        districts = pd.read_csv(tmp_path / "districts.csv")
        new_districts = pd.read_csv(tmp_path / "new_districts.csv")
        predictor = Predictor.from_pretrained("counts")
        roles = dict(values="cases", space=("lon", "lat"), crs="lonlat",
                     exposure="population")
        rates = predictor.predict(districts, new_districts, interval=0.9, exceedance=2e-3,
                                  **roles)
        draws = predictor.joint_samples(districts, new_districts, 100, chunk=16, **roles)
        totals = aggregate(draws * new_districts["population"].to_numpy(),
                           new_districts["region"], statistic="sum", interval=0.9)
        # --- checks ---
        population = new_districts["population"].to_numpy()
        np.testing.assert_allclose(rates["mean"] * population, rates["expected_count"],
                                   rtol=1e-4)
        observed_rate = held_out["cases"].to_numpy() / population
        covered.append((observed_rate >= rates["lower"]) & (observed_rate <= rates["upper"]))
        errors.append(np.log(rates["mean"].to_numpy()) - np.log(true_risk))
        overall = districts["cases"].sum() / districts["population"].sum()
        baseline.append(np.log(overall) - np.log(true_risk))
        exceeded = (observed_rate > 2e-3).astype(float)
        brier.append((rates["exceedance_0.002"].to_numpy() - exceeded) ** 2)
        base_brier.append((exceeded.mean() - exceeded) ** 2)
        held = held_out.groupby("region")["cases"].sum()
        totals_covered += [totals.loc[r, "lower"] <= held[r] <= totals.loc[r, "upper"]
                           for r in held.index]
        assert set(totals.columns) >= {"mean", "lower", "upper"}
    coverage = np.concatenate(covered).mean()
    assert 0.8 <= coverage <= 0.99, coverage
    rmse = np.sqrt(np.mean(np.concatenate(errors) ** 2))
    rmse_overall = np.sqrt(np.mean(np.concatenate(baseline) ** 2))
    assert rmse < 0.8 * rmse_overall, (rmse, rmse_overall)  # log-rate error
    assert np.concatenate(brier).mean() < np.concatenate(base_brier).mean()
    assert np.mean(totals_covered) >= 4 / 6
