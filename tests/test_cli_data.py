"""CLI on the user's own data: predict to a grid or targets, finetune, info, models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")

from bsatnp import cli  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_data")
    rng = np.random.default_rng(0)
    n = 150
    obs = pd.DataFrame({"lon": rng.uniform(116, 117, n), "lat": rng.uniform(39.5, 40.5, n),
                        "time": pd.date_range("2024-01-01", periods=n, freq="h")})
    obs["pm25"] = 60 + 20 * np.sin(3 * obs["lon"]) + rng.normal(0, 2, n)
    obs.to_csv(root / "obs.csv", index=False)
    obs.iloc[:10][["lon", "lat"]].to_csv(root / "targets.csv", index=False)
    torch.manual_seed(0)
    Predictor(BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
                     head_hidden=(32,))).save(root / "bare.safetensors")
    return root


ROLES = ["--values", "pm25", "--space", "lon", "lat", "--crs", "lonlat", "--units", "ug/m3"]


def test_predict_grid_to_netcdf_in_the_units_of_the_values(files, capsys):
    out = files / "grid.nc"
    code = cli.main(["predict", "--checkpoint", str(files / "bare.safetensors"),
                     "--observations", str(files / "obs.csv"), *ROLES,
                     "--grid", "lon=116:117:11,lat=39.5:40.5:9", "--interval", "0.9",
                     "--output", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with xr.open_dataset(out) as ds:
        assert ds["mean"].dims == ("lon", "lat") and ds["mean"].shape == (11, 9)
        assert ds["mean"].attrs["units"] == "ug/m3"
        np.testing.assert_allclose(ds["lon"].values, np.linspace(116, 117, 11))
        assert bool((ds["lower"] < ds["mean"]).all()) and bool((ds["mean"] < ds["upper"]).all())
        assert 20 < float(ds["mean"].mean()) < 100  # µg/m³, not model units
    assert "Wrote predictions at 99 targets from 150 observations" in capsys.readouterr().out


def test_predict_chooses_the_neighbourhood_size_on_held_out_observations(files, capsys):
    out = files / "chosen.csv"
    assert cli.main(["predict", "--checkpoint", str(files / "bare.safetensors"),
                     "--observations", str(files / "obs.csv"), *ROLES, "--targets",
                     str(files / "targets.csv"), "--neighbours", "choose", "--holdout", "gap",
                     "--output", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    chosen = int(said.split("Chose ")[1].split()[0])
    assert "observations held out (gap); mean CRPS by K: 128:" in said
    assert chosen in (128, 256, 512, 1024, 2048)
    assert len(pd.read_csv(out)) == 10


def test_predict_targets_csv_and_parquet(files):
    for suffix in (".csv", ".parquet"):
        out = files / f"pred{suffix}"
        assert cli.main(["predict", "--checkpoint", str(files / "bare.safetensors"),
                         "--observations", str(files / "obs.csv"), *ROLES, "--targets",
                         str(files / "targets.csv"), "--quantiles", "0.1", "0.9",
                         "--output", str(out), "--quiet"]) == 0
        frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
        targets = pd.read_csv(files / "targets.csv")
        np.testing.assert_array_equal(frame[["lon", "lat"]].to_numpy(), targets.to_numpy())
        assert {"mean", "std", "q0.1", "q0.9"} <= set(frame.columns)


def test_predict_joint_samples_are_those_of_predictor_joint_samples(files):
    """--samples S --joint C writes the joint draws of Predictor.joint_samples (same seed),
    beside the marginal mean and std of the same command without them."""
    out = files / "joint.csv"
    args = ["predict", "--checkpoint", str(files / "bare.safetensors"), "--observations",
            str(files / "obs.csv"), *ROLES, "--targets", str(files / "targets.csv"),
            "--neighbours", "all", "--quiet"]
    assert cli.main([*args, "--samples", "5", "--joint", "3", "--seed", "2", "--output",
                     str(out)]) == 0
    assert cli.main([*args, "--output", str(files / "plain.csv")]) == 0
    frame, plain = pd.read_csv(out), pd.read_csv(files / "plain.csv")
    np.testing.assert_allclose(frame["mean"], plain["mean"])
    predictor = Predictor.load(files / "bare.safetensors")
    draws = predictor.joint_samples(pd.read_csv(files / "obs.csv"),
                                    pd.read_csv(files / "targets.csv"), 5, chunk=3, seed=2,
                                    values="pm25", space=("lon", "lat"), crs="lonlat",
                                    units="ug/m3")
    np.testing.assert_allclose(frame[[f"sample_{i}" for i in range(5)]].to_numpy().T, draws,
                               rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--values", "pm10"], "no column(s) ['pm10']"),
    (["--grid", "lon=1:2"], "--grid: expected NAME=START:STOP:N"),
    (["--model", "nope"], "exactly one of --checkpoint FILE or --model NAME"),
    (["--max-memory", "1MB"], "--max-memory 1MB: this process already holds"),
    (["--max-memory", "5GB", "--grid", "lon=116:117:5000,lat=39.5:40.5:5000", "--output",
      "x.csv"], "outputs held whole for .csv (a --grid written to .nc streams)"),
    (["--time-window", "2h"], "time_window needs a model that reads time"),
    (["--holdout", "gap"], "--holdout shapes the rows held out by --neighbours choose"),
    (["--seed", "3"], "--seed seeds the --samples; without --samples it would be ignored"),
    (["--joint", "4"], "--joint makes the --samples joint: give --samples N"),
    (["--joint", "4", "--samples", "3"], "and a table output (.csv or .parquet)"),
    (["--max-memory", "5GB", "--samples", "10000", "--grid", "lon=116:117:80,lat=39.5:40.5:50"],
     "of outputs held whole for .nc (--samples are drawn whole)"),  # before: not counted
])
def test_predict_user_errors_are_one_line_exit_2(files, capsys, args, message):
    base = ["predict", "--checkpoint", str(files / "bare.safetensors"), "--observations",
            str(files / "obs.csv"), "--space", "lon", "lat", "--crs", "lonlat", "--quiet"]
    if "--output" not in args:
        base += ["--output", str(files / "x.nc")]
    else:
        args = [str(files / a) if a == "x.csv" else a for a in args]
    if "--values" not in args:
        base += ["--values", "pm25"]
    if "--grid" not in args:
        base += ["--grid", "lon=116:117:3,lat=39.5:40.5:3"]
    assert cli.main(base + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_finetune_then_info_then_predict_without_roles(files, capsys):
    out = files / "tuned"
    assert cli.main(["finetune", "--checkpoint", str(files / "bare.safetensors"), "--data",
                     str(files / "obs.csv"), *ROLES, "--time", "time", "--steps", "4",
                     "--out", str(out), "--quiet"]) == 2  # the model reads no time
    assert "reads 0 time column(s)" in capsys.readouterr().err
    assert cli.main(["finetune", "--checkpoint", str(files / "bare.safetensors"), "--data",
                     str(files / "obs.csv"), *ROLES, "--steps", "4", "--out", str(out),
                     "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out / "best.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "pm25 ~ s(lon, lat; lonlat)" in text and "values: (f − (" in text
    pred = files / "tuned.csv"
    assert cli.main(["predict", "--checkpoint", str(out / "best.safetensors"),
                     "--observations", str(files / "obs.csv"), "--targets",
                     str(files / "targets.csv"), "--output", str(pred), "--quiet"]) == 0
    assert len(pd.read_csv(pred)) == 10


def test_models_lists_the_shipped_models(capsys):
    assert cli.main(["models"]) == 0
    assert capsys.readouterr().out.strip()


def test_a_grid_to_netcdf_is_written_block_by_block_and_equals_the_in_memory_result(
        files, monkeypatch):
    from bsatnp.data import files as data_files

    seen = []
    original = data_files.write_grid
    monkeypatch.setattr("bsatnp.data.files.write_grid",
                        lambda *a, **k: seen.append(a[3]) or original(*a, **k))
    out = files / "streamed.nc"
    assert cli.main(["predict", "--checkpoint", str(files / "bare.safetensors"),
                     "--observations", str(files / "obs.csv"), *ROLES,
                     "--grid", "lon=116:117:40,lat=39.5:40.5:30", "--chunk-size", "100",
                     "--output", str(out), "--quiet"]) == 0
    assert seen == [{"lon": 3}]  # 100 points a block: 3 rows of 30
    predictor = Predictor.load(files / "bare.safetensors")
    eager = predictor.predict(pd.read_csv(files / "obs.csv"),
                              xr.Dataset(coords={"lon": np.linspace(116, 117, 40),
                                                 "lat": np.linspace(39.5, 40.5, 30)}),
                              values="pm25", space=("lon", "lat"), crs="lonlat")
    with xr.open_dataset(out) as ds:
        np.testing.assert_allclose(ds["mean"].values, eager["mean"].values, rtol=1e-5,
                                   atol=1e-4)
        np.testing.assert_allclose(ds["std"].values, eager["std"].values, rtol=1e-5, atol=1e-4)
    assert not [p for p in files.iterdir() if p.name.startswith(".streamed.nc")]  # no temp


def test_predict_with_a_time_window_conditions_each_time_on_its_window(files, capsys):
    torch.manual_seed(0)
    Predictor(BSATNP(dim_t=1, num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32,
                     embed_hidden=(32,), head_hidden=(32,))).save(files / "st.safetensors")
    obs = pd.read_csv(files / "obs.csv", parse_dates=["time"])
    targets = obs.iloc[[20, 21, 80]][["lon", "lat", "time"]]
    targets.to_csv(files / "st_targets.csv", index=False)
    base = ["predict", "--checkpoint", str(files / "st.safetensors"), "--observations",
            str(files / "obs.csv"), *ROLES, "--time", "time", "--targets",
            str(files / "st_targets.csv"), "--quiet"]
    assert cli.main(base + ["--time-window", "3h", "--output", str(files / "st.csv")]) == 0
    predictor = Predictor.load(files / "st.safetensors")
    expected = predictor.predict(obs, targets, values="pm25", space=("lon", "lat"),
                                 crs="lonlat", units="ug/m3", time="time",
                                 time_window="3h")
    np.testing.assert_allclose(pd.read_csv(files / "st.csv")["mean"], expected["mean"],
                               rtol=1e-5)
    assert cli.main(base + ["--time-window", "-1", "--output", str(files / "st.csv")]) == 2
    assert "time_window must be >= 0" in capsys.readouterr().err
