"""The README's own-data path, end to end, on a synthetic GP in degrees and °C.

A GP with a known covariance (RBF, 25 km lengthscale, 3 °C standard deviation) is drawn
jointly at 300 stations in the Alps and on a 20 × 15 lon/lat grid; the stations (with
0.3 °C noise) go through a CSV, the shipped ``spatial`` model (and ``gp2d``) predicts the
grid into a netCDF file, exactly as the README shows. Checked: the units, the grid's
coordinates (copied exactly), the accuracy in °C against the truth, and the calibration of
the 90% interval.
"""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")
pytest.importorskip("pyproj")

from bsatnp import Predictor, grid  # noqa: E402

EARTH_KM = 6371.0


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distances ``[N, M]`` between (lon, lat) degrees."""
    lon1, lat1 = np.radians(a[:, None, 0]), np.radians(a[:, None, 1])
    lon2, lat2 = np.radians(b[None, :, 0]), np.radians(b[None, :, 1])
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin(
        (lon2 - lon1) / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def alpine_field(seed: int, n_stations: int = 300):
    rng = np.random.default_rng(seed)
    stations = np.stack([rng.uniform(5.0, 9.0, n_stations), rng.uniform(45.0, 48.0,
                                                                        n_stations)], -1)
    lon, lat = np.linspace(5.2, 8.8, 20), np.linspace(45.2, 47.8, 15)
    cells = np.stack(np.meshgrid(lon, lat, indexing="ij"), -1).reshape(-1, 2)
    points = np.concatenate([stations, cells])
    cov = 9.0 * np.exp(-0.5 * (haversine_km(points, points) / 25.0) ** 2)
    field = 12.0 + np.linalg.cholesky(cov + 1e-6 * np.eye(len(points))) @ rng.standard_normal(
        len(points))
    obs = pd.DataFrame({"lon": stations[:, 0], "lat": stations[:, 1],
                        "t2m": field[:n_stations] + rng.normal(0, 0.3, n_stations)})
    return obs, (lon, lat), field[n_stations:].reshape(20, 15)


@pytest.mark.parametrize("name", ["spatial", "gp2d"])  # the README's model, and the 2D GP
def test_readme_path_csv_to_netcdf_in_degrees_and_celsius(tmp_path, name):
    covered, errors, prior = [], [], []
    for seed in range(3):
        obs, (lon, lat), truth = alpine_field(seed)
        obs.to_csv(tmp_path / "stations.csv", index=False)
        # --- the README's lines ---
        stations = pd.read_csv(tmp_path / "stations.csv")
        predictor = Predictor.from_pretrained(name)
        out = predictor.predict(stations, grid(lon=(5.2, 8.8, 20), lat=(45.2, 47.8, 15)),
                                values="t2m", space=("lon", "lat"), crs="lonlat",
                                units="degC", interval=0.9)
        out.to_netcdf(tmp_path / "t2m.nc")
        # ---
        with xr.open_dataset(tmp_path / "t2m.nc") as ds:
            assert ds["mean"].attrs["units"] == "degC" and ds["lower"].attrs["units"] == "degC"
            np.testing.assert_array_equal(ds["lon"].values, lon)
            np.testing.assert_array_equal(ds["lat"].values, lat)
            mean = ds["mean"].transpose("lon", "lat").values
            lower = ds["lower"].transpose("lon", "lat").values
            upper = ds["upper"].transpose("lon", "lat").values
        covered.append((lower <= truth) & (truth <= upper))
        errors.append(mean - truth)
        prior.append(truth - 12.0)
    covered, errors, prior = map(np.concatenate, (covered, errors, prior))
    rmse, prior_rmse = np.sqrt((errors**2).mean()), np.sqrt((prior**2).mean())
    assert rmse < 0.6 * prior_rmse, (rmse, prior_rmse)  # in °C: far better than the mean
    assert 0.8 <= covered.mean() <= 0.98, covered.mean()  # 90% interval, 900 cells
