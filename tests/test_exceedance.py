"""Exceedance probabilities P(f > threshold) per target, in the user's units (issue 32)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")
stats = pytest.importorskip("scipy.stats")

from bsatnp import cli, cli_data  # noqa: E402
from bsatnp.data.tables import grid  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402

SMALL = dict(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
             head_hidden=(32,))
ROLES = dict(values="pm25", space=("lon", "lat"), crs="lonlat", units="ug/m3")


def small_model(seed: int = 0, **overrides) -> BSATNP:
    torch.manual_seed(seed)
    return BSATNP(**{**SMALL, **overrides}).eval()


def stations(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"lon": rng.uniform(116, 117, n), "lat": rng.uniform(39.5, 40.5, n)})
    frame["pm25"] = np.exp(3.5 + 0.6 * np.sin(3 * frame["lon"]) + rng.normal(0, 0.2, n))
    return frame


TARGETS = stations(9, seed=3)[["lon", "lat"]]


def test_identity_exceedance_is_the_normal_survival_of_the_mean_and_std():
    obs = stations()
    thresholds = (10.0, 18.0, 22.0, 26.0, 40.0)
    out = Predictor(small_model()).predict(obs, TARGETS, exceedance=thresholds, **ROLES)
    for t in thresholds:
        expected = stats.norm.sf(t, loc=out["mean"], scale=out["std"])
        np.testing.assert_allclose(out[f"exceedance_{t}"], expected, rtol=1e-4, atol=1e-6)
    probs = out[[f"exceedance_{t}" for t in thresholds]].to_numpy()
    assert (np.diff(probs, axis=1) <= 0).all()  # monotone decreasing in the threshold
    assert 0.05 < probs[:, 2].min() and probs[:, 2].max() < 0.95  # a threshold in the bulk


def _model_units(out: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The log-space Normal (loc, scale) of a log-normal's mean and std in user units."""
    s2 = np.log1p((out["std"].to_numpy(np.float64) / out["mean"].to_numpy(np.float64)) ** 2)
    return np.log(out["mean"].to_numpy(np.float64)) - s2 / 2, np.sqrt(s2)


def test_log_transform_exceedance_is_computed_in_model_units():
    obs = stations()
    conditioned = Predictor(small_model()).condition(obs, value_transform="log", **ROLES)
    thresholds = (-5.0, 0.0, 15.0, 21.0, 26.0, 40.0)
    out = conditioned.predict(TARGETS, exceedance=thresholds, quantiles=(0.05, 0.5))
    norm = conditioned.normalizer
    shift, scale = norm.value_shift[0], norm.value_scale[0]
    loc, s = _model_units(out)
    mean_model, std_model = (loc - shift) / scale, s / scale  # the model's own Normal
    got = out[[f"exceedance_{t}" for t in thresholds]].to_numpy()
    for k, t in enumerate(thresholds):
        if t <= 0:  # below log's domain: every log-normal value exceeds it
            np.testing.assert_array_equal(got[:, k], 1.0)
            continue
        z = (np.log(t) - shift) / scale  # the threshold in model units
        np.testing.assert_allclose(got[:, k], stats.norm.sf(z, mean_model, std_model),
                                   rtol=1e-4, atol=1e-6)
    assert (np.diff(got, axis=1) <= 0).all()
    assert 0.05 < got[:, 3].min() and got[:, 3].max() < 0.95
    # Each target's own 5% quantile and median are exceeded with 0.95 and 0.5 (exact through T).
    for i in range(3):
        one = TARGETS.iloc[[i]]
        row = out.iloc[i]
        probs = conditioned.predict(one, exceedance=(row["q0.05"], row["q0.5"]))
        np.testing.assert_allclose(probs.iloc[0, -2:].to_numpy(float), [0.95, 0.5], atol=1e-4)


def test_exceedance_fails_if_the_transform_is_ignored():
    """Ignoring log (the Normal of the mean/std in user units, or the threshold mapped to
    model units without log) gives other numbers than the log-normal's exceedance."""
    obs = stations()
    conditioned = Predictor(small_model()).condition(obs, value_transform="log", **ROLES)
    out = conditioned.predict(TARGETS, exceedance=(21.0, 26.0))
    norm = conditioned.normalizer
    shift, scale = norm.value_shift[0], norm.value_scale[0]
    loc, s = _model_units(out)
    for t in (21.0, 26.0):
        got = out[f"exceedance_{t}"].to_numpy()
        truth = stats.norm.sf(np.log(t), loc, s)
        np.testing.assert_allclose(got, truth, rtol=1e-4, atol=1e-6)
        user_normal = stats.norm.sf(t, out["mean"], out["std"])
        no_log = stats.norm.sf((t - shift) / scale, (loc - shift) / scale, s / scale)
        for wrong in (user_normal, no_log):
            assert np.abs(got - wrong).max() > 0.02


def test_xarray_has_an_exceedance_variable_over_a_threshold_dimension():
    obs = stations()
    conditioned = Predictor(small_model()).condition(obs, **ROLES)
    template = grid(lon=(116.0, 117.0, 5), lat=(39.5, 40.5, 4))
    out = conditioned.predict(template, exceedance=(25.0, 40.0))
    assert out["exceedance"].dims == ("threshold", "lon", "lat")
    np.testing.assert_array_equal(out["threshold"].values, [25.0, 40.0])
    assert out["exceedance"].attrs == {"units": "1", "long_name": "P(pm25 > threshold)",
                                       "threshold_units": "ug/m3"}
    expected = stats.norm.sf(out["threshold"].values[:, None, None], out["mean"].values,
                             out["std"].values)
    np.testing.assert_allclose(out["exceedance"].values, expected, rtol=1e-4, atol=1e-6)
    table = conditioned.predict(template, exceedance=(25.0, 40.0), as_table=True)
    np.testing.assert_allclose(table["exceedance_40.0"],
                               out["exceedance"].sel(threshold=40.0).values.ravel(), rtol=1e-6)


def test_several_values_get_prefixed_exceedance_outputs():
    obs = stations()
    obs["no2"] = obs["pm25"] / 2 + 5
    roles = dict(values=("pm25", "no2"), space=("lon", "lat"), crs="lonlat")
    predictor = Predictor(small_model(dim_f=2))
    out = predictor.predict(obs, TARGETS, exceedance=(20.0,), **roles)
    assert {"pm25_exceedance_20.0", "no2_exceedance_20.0"} <= set(out.columns)
    for value in ("pm25", "no2"):
        np.testing.assert_allclose(out[f"{value}_exceedance_20.0"],
                                   stats.norm.sf(20.0, out[f"{value}_mean"], out[f"{value}_std"]),
                                   rtol=1e-4, atol=1e-6)
    ds = predictor.predict(obs, grid(lon=(116.0, 117.0, 3), lat=(39.5, 40.5, 3)),
                           exceedance=(20.0,), **roles)
    assert ds["no2_exceedance"].dims == ("threshold", "lon", "lat")


def test_a_lazy_grid_passes_the_thresholds_through():
    pytest.importorskip("dask.array")
    conditioned = Predictor(small_model()).condition(stations(), **ROLES)
    template = grid(lon=(116.0, 117.0, 7), lat=(39.5, 40.5, 5))
    eager = conditioned.predict(template, exceedance=(25.0, 40.0))
    lazy = conditioned.predict(template, exceedance=(25.0, 40.0), chunks={"lon": 3})
    assert lazy["exceedance"].dims == eager["exceedance"].dims
    xr.testing.assert_allclose(lazy.compute(), eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "75", [True], [None]])
def test_bad_thresholds_are_refused(bad):
    conditioned = Predictor(small_model()).condition(stations(), **ROLES)
    with pytest.raises(ValueError, match="exceedance thresholds must be finite numbers"):
        conditioned.predict(TARGETS, exceedance=bad)


def test_a_categorical_model_refuses_exceedance():
    obs = stations()
    obs["state"] = np.where(obs["pm25"] > 33, "high", "low")
    predictor = Predictor(small_model(likelihood="categorical", dim_f=2))
    with pytest.raises(ValueError, match="^exceedance: only for a model of numeric values"):
        predictor.predict(obs, TARGETS, values="state", space=("lon", "lat"), crs="lonlat",
                          exceedance=(1.0,))


def test_each_threshold_is_counted_in_memory_like_a_quantile(monkeypatch):
    from bsatnp import options as module

    conditioned = Predictor(small_model()).condition(stations(), **ROLES)
    monkeypatch.setattr(module, "available_memory", lambda: 1)

    def needed(**options):
        with pytest.raises(ValueError, match=r"bytes each") as info:
            conditioned.predict(TARGETS, **options)
        return str(info.value).split("(")[1].split(" bytes")[0]

    assert needed(exceedance=(1.0, 2.0, 3.0)) == needed(quantiles=(0.1, 0.2, 0.3))
    assert int(needed(exceedance=(1.0,))) > int(needed())


def test_the_cli_counts_each_threshold_in_held_outputs(monkeypatch):
    from bsatnp.data import tables

    conditioned = Predictor(small_model()).condition(stations(), **ROLES)
    monkeypatch.setattr(tables, "resident_memory", lambda: 0)
    targets = stations(1000, seed=1)[["lon", "lat"]]  # 256 B each for mean and std

    def args(**given):
        options = dict(max_memory="1000000", quantiles=None, exceedance=None, interval=None,
                       samples=0, output="out.csv")
        return argparse.Namespace(**{**options, **given})

    assert cli_data._working_memory(args(), conditioned, targets, streamed=False) == 250_000
    for given in ({"quantiles": [0.1, 0.5, 0.9]}, {"exceedance": [10.0, 20.0, 30.0]}):
        with pytest.raises(ValueError, match="outputs held whole for .csv"):
            cli_data._working_memory(args(**given), conditioned, targets, streamed=False)


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("exceedance")
    obs = stations(150)
    obs["state"] = np.where(obs["pm25"] > 33, "high", "low")
    obs.to_csv(root / "obs.csv", index=False)
    TARGETS.to_csv(root / "targets.csv", index=False)
    Predictor(small_model()).save(root / "bare.safetensors")
    Predictor(small_model(likelihood="categorical", dim_f=2)).save(root / "classes.safetensors")
    return root


def cli_args(files, output, *extra, checkpoint="bare.safetensors", values="pm25"):
    return ["predict", "--checkpoint", str(files / checkpoint), "--observations",
            str(files / "obs.csv"), "--values", values, "--space", "lon", "lat", "--crs",
            "lonlat", "--output", str(output), "--quiet", *extra]


def test_cli_writes_exceedance_columns_and_variables(files, capsys):
    out = files / "pred.csv"
    assert cli.main(cli_args(files, out, "--targets", str(files / "targets.csv"),
                             "--transform", "log", "--exceedance", "30", "45")) == 0
    frame = pd.read_csv(out)
    assert {"mean", "std", "exceedance_30.0", "exceedance_45.0"} <= set(frame.columns)
    loc, s = _model_units(frame)
    np.testing.assert_allclose(frame["exceedance_30.0"], stats.norm.sf(np.log(30.0), loc, s),
                               rtol=1e-3, atol=1e-5)  # through the CSV's text
    assert (frame["exceedance_45.0"] <= frame["exceedance_30.0"]).all()
    nc = files / "grid.nc"
    assert cli.main(cli_args(files, nc, "--grid", "lon=116:117:5,lat=39.5:40.5:4",
                             "--exceedance", "30")) == 0, capsys.readouterr().err
    with xr.open_dataset(nc) as ds:
        assert ds["exceedance"].dims == ("threshold", "lon", "lat")
        np.testing.assert_allclose(ds["exceedance"].values[0],
                                   stats.norm.sf(30.0, ds["mean"], ds["std"]), rtol=1e-4,
                                   atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--exceedance", "nan"], "argument --exceedance: must be a finite number, got nan"),
    (["--exceedance", "high"], "argument --exceedance: expected a number, got 'high'"),
    (["--exceedance", "1", "--checkpoint", "CLASSES", "--values", "state"],
     "--exceedance: only for a model of numeric values"),
])
def test_cli_bad_exceedance_is_one_line_exit_2(files, capsys, extra, message):
    extra = [str(files / "classes.safetensors") if a == "CLASSES" else a for a in extra]
    args = cli_args(files, files / "x.nc", "--grid", "lon=116:117:3,lat=39.5:40.5:3", *extra)
    if message.startswith("argument"):  # argparse's own error: one line, exit 2
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        assert exit_.value.code == 2
    else:
        assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
