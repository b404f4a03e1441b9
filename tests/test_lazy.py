"""Lazy (dask-backed) predictions on grids: equal to the in-memory result, block by block."""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")
pytest.importorskip("scipy")

from bsatnp import Predictor, grid  # noqa: E402


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"lon": rng.uniform(0, 10, 300), "lat": rng.uniform(0, 5, 300)})
    obs["v"] = np.sin(obs.lon) + obs.lat
    return obs


@pytest.fixture(scope="module")
def conditioned(data):
    return Predictor.from_pretrained("gp2d").condition(data, values="v", space=("lon", "lat"),
                                                       neighbours=None)


def test_a_chunked_grid_is_lazy_and_equals_the_in_memory_result(conditioned):
    targets = grid(lon=(0, 10, 37), lat=(0, 5, 23))
    eager = conditioned.predict(targets, interval=0.9, quantiles=(0.1, 0.5))
    lazy = conditioned.predict(targets, interval=0.9, quantiles=(0.1, 0.5),
                               chunks={"lat": 7, "lon": 10})
    assert isinstance(lazy["mean"].data, da.Array)
    assert lazy["mean"].data.chunks == ((10, 10, 10, 7), (7, 7, 7, 2))
    assert list(lazy.data_vars) == list(eager.data_vars)
    assert lazy["quantiles"].dims == eager["quantiles"].dims
    xr.testing.assert_allclose(lazy.compute(), eager, rtol=1e-5, atol=1e-5)


def test_dask_backed_targets_come_back_lazy_in_their_own_chunks(conditioned):
    lon, lat = np.linspace(0, 10, 30), np.linspace(0, 5, 20)
    mask = xr.DataArray(da.ones((20, 30), chunks=(8, 12)), coords={"lat": lat, "lon": lon},
                        dims=("lat", "lon"), name="land")
    lazy = conditioned.predict(mask)
    assert lazy["mean"].dims == ("lat", "lon")
    assert lazy["mean"].data.chunks == ((8, 8, 4), (12, 12, 6))
    eager = conditioned.predict(mask.compute())
    xr.testing.assert_allclose(lazy.compute(), eager, rtol=1e-5, atol=1e-5)


def test_local_conditioning_predicts_each_block_as_it_would_alone(data):
    local = Predictor.from_pretrained("gp2d").condition(data, values="v", space=("lon", "lat"),
                                                        neighbours=40)
    targets = grid(lon=(0, 10, 24), lat=(0, 5, 16))
    lazy = local.predict(targets, chunks={"lon": 12, "lat": 8}).compute()
    assert np.isfinite(lazy["mean"].values).all()
    for lon in (slice(0, 12), slice(12, 24)):
        for lat in (slice(0, 8), slice(8, 16)):
            block = local.predict(targets.isel(lon=lon, lat=lat))
            np.testing.assert_allclose(lazy["mean"].isel(lon=lon, lat=lat).values,
                                       block["mean"].values, rtol=1e-5, atol=1e-5)


def test_a_grid_larger_than_memory_is_lazy_and_any_block_computes(conditioned):
    targets = grid(lon=(0, 10, 100_000), lat=(0, 5, 20_000))  # 2e9 points
    with pytest.raises(ValueError, match="memory"):
        conditioned.predict(targets)  # in memory: refused before any work
    lazy = conditioned.predict(targets, chunks={"lon": 500, "lat": 500})
    assert lazy["mean"].shape == (100_000, 20_000)
    corner = lazy.isel(lon=slice(0, 3), lat=slice(0, 3)).compute()
    eager = conditioned.predict(targets.isel(lon=slice(0, 3), lat=slice(0, 3)))
    xr.testing.assert_allclose(corner, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda c: c.predict(pd.DataFrame({"lon": [1.0], "lat": [1.0]}), chunks={"lon": 1}),
     "chunks= needs xarray targets"),
    (lambda c: c.predict(grid(lon=(0, 1, 4), lat=(0, 1, 4)), chunks={"time": 2}),
     r"chunks names \['time'\]"),
    (lambda c: c.predict(grid(lon=(0, 1, 4), lat=(0, 1, 4)), chunks={"lon": 2}, n_samples=3),
     "samples are not drawn block by block"),
])
def test_lazy_requests_that_cannot_be_honoured_are_refused(conditioned, call, message):
    with pytest.raises(ValueError, match=message):
        call(conditioned)


@pytest.mark.parametrize("sizes, points, blocks", [
    ({"lon": 40, "lat": 30}, 100, {"lon": 3}),          # rows of 30: three a block
    ({"lon": 40, "lat": 30}, 10_000, {"lon": 40}),      # all of it in one block
    ({"time": 5, "lon": 40, "lat": 30}, 20, {"time": 1, "lon": 1, "lat": 20}),
    ({"lon": 7}, 3, {"lon": 3}),
])
def test_blocks_hold_at_most_the_points_asked_for(sizes, points, blocks):
    from bsatnp.data.lazy import blocks_of

    assert blocks_of(sizes, points) == blocks


def test_auto_chunks_follow_the_chunk_size(conditioned):
    targets = grid(lon=(0, 10, 40), lat=(0, 5, 30))
    lazy = conditioned.predict(targets, chunks="auto", chunk_size=100)
    assert lazy["mean"].data.chunks[0] == (3,) * 13 + (1,)
    with pytest.raises(ValueError, match="chunks must be a mapping or 'auto'"):
        conditioned.predict(targets, chunks="everything")
