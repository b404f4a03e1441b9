"""A grid predicted block by block straight into netCDF: the in-memory result, no dask."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")
pytest.importorskip("scipy")

from bsatnp import Predictor, grid  # noqa: E402
from bsatnp.data.files import write_table  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402


@pytest.fixture(scope="module")
def observations():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"lon": rng.uniform(0, 10, 200), "lat": rng.uniform(0, 5, 200)})
    obs["v"] = np.sin(obs.lon) + obs.lat
    return obs


@pytest.mark.parametrize("neighbours", [None, 40])
def test_the_file_holds_the_in_memory_prediction(observations, tmp_path, neighbours):
    conditioned = Predictor.from_pretrained("gp2d").condition(
        observations, values="v", space=("lon", "lat"), neighbours=neighbours)
    targets = grid(lat=(0, 5, 13), lon=(0, 10, 21))  # lat first: the file keeps that order
    options = {"quantiles": (0.1, 0.5), "interval": 0.9, "exceedance": (1.0,)}
    whole = write_table(conditioned.predict(targets, **options), tmp_path / "whole.nc")
    blocks = conditioned.write_grid(targets, tmp_path / "blocks.nc", chunk_size=40, **options)
    with xr.open_dataset(whole) as expected, xr.open_dataset(blocks) as got:
        assert list(got.data_vars) == list(expected.data_vars)
        assert got["quantiles"].dims == expected["quantiles"].dims == ("quantile", "lat", "lon")
        assert {name: v.attrs for name, v in got.data_vars.items()} == \
            {name: v.attrs for name, v in expected.data_vars.items()}
        if neighbours is None:  # one encoding: any block gives the same numbers
            xr.testing.assert_allclose(got.load(), expected.load(), rtol=1e-5, atol=1e-5)
        else:  # each block's tiles are its own: close, not equal; every cell written
            assert np.isfinite(got["mean"].values).all()
            assert np.abs(got["mean"] - expected["mean"]).mean() < 0.1


def test_class_names_are_written_as_text(tmp_path):
    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                   head_hidden=(8,), dim_f=3, likelihood="categorical")
    rng = np.random.default_rng(1)
    obs = pd.DataFrame({"x": rng.uniform(0, 3, 40), "y": rng.uniform(0, 3, 40),
                        "state": rng.choice(["S", "I", "R"], 40)})
    conditioned = Predictor(model).condition(obs, values="state", space=("x", "y"))
    targets = grid(x=(0, 3, 7), y=(0, 3, 5))
    whole = write_table(conditioned.predict(targets), tmp_path / "whole.nc")
    blocks = conditioned.write_grid(targets, tmp_path / "blocks.nc", chunk_size=8)
    with xr.open_dataset(whole) as expected, xr.open_dataset(blocks) as got:
        xr.testing.assert_allclose(got.load(), expected.load(), rtol=1e-5, atol=1e-6)


def test_bad_requests_write_nothing(observations, tmp_path):
    conditioned = Predictor.from_pretrained("gp2d").condition(
        observations, values="v", space=("lon", "lat"), neighbours=None)
    with pytest.raises(ValueError, match="xarray targets"):
        conditioned.write_grid(observations[["lon", "lat"]], tmp_path / "a.nc")
    with pytest.raises(ValueError, match=r"\.nc only"):
        conditioned.write_grid(grid(lon=(0, 1, 3), lat=(0, 1, 3)), tmp_path / "a.csv")
    with pytest.raises(ValueError, match="quantiles"):
        conditioned.write_grid(grid(lon=(0, 1, 3), lat=(0, 1, 3)), tmp_path / "a.nc",
                               quantiles=(1.5,))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="without n_samples"):
        conditioned.predict(grid(lon=(0, 1, 3), lat=(0, 1, 3)), seed=3)


def test_the_cli_streams_a_grid_without_loading_the_compiler(observations, tmp_path):
    """Before: checking a checkpoint's shapes on the meta device loaded torch._dynamo and
    sympy (about 70 MiB of the 500 MB a bounded grid may use)."""
    observations.to_csv(tmp_path / "obs.csv", index=False)
    out = tmp_path / "grid.nc"
    code = ("import sys; from bsatnp import cli; "
            f"code = cli.main(['predict', '--quiet', '--model', 'gp2d', '--observations', "
            f"{str(tmp_path / 'obs.csv')!r}, '--values', 'v', '--space', 'lon', 'lat', "
            f"'--grid', 'lon=0:10:30,lat=0:5:20', '--chunk-size', '100', '--max-memory', "
            f"'2GB', '--output', {str(out)!r}]); "
            "assert code == 0, code; "
            "assert not {'torch._dynamo', 'sympy'} & set(sys.modules), 'compiler loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
    with xr.open_dataset(out) as got:
        assert got["mean"].shape == (30, 20) and np.isfinite(got["std"].values).all()
