"""Own data in, own data out: no silent wrap, shift or drop (issue 28, item 5-6)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")

from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402


def tiny(**dims) -> Predictor:
    torch.manual_seed(0)
    return Predictor(BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8,
                            embed_hidden=(8,), head_hidden=(8,), **dims))


@pytest.fixture(scope="module")
def spacetime():
    return tiny(dim_t=1)


def frames(start: str, freq: str = "D", n: int = 40):
    rng = np.random.default_rng(0)
    times = np.arange(np.datetime64(start, "D"), np.datetime64(start, "D") + n)
    obs = pd.DataFrame({"x": rng.uniform(0, 1, n), "y": rng.uniform(0, 1, n), "when": times,
                        "v": rng.normal(size=n)})
    return obs, obs.iloc[:5][["x", "y", "when"]]


@pytest.mark.parametrize("year", ["1500", "2500", "9000"])
def test_dates_outside_the_nanosecond_range_do_not_wrap(spacetime, year):
    """Before: a date after 2262 or before 1677 moved by 584 years (nanosecond overflow)."""
    obs, targets = frames(f"{year}-03-01")
    near, _ = frames("2000-03-01")
    kw = {"values": "v", "space": ("x", "y"), "time": "when"}
    far = spacetime.condition(obs, **kw)
    same = spacetime.condition(near, **kw)
    seconds_far = far.normalizer.time_shift
    expected = (np.datetime64(f"{year}-03-01", "s") - np.datetime64("1970-01-01", "s")
                ).astype(np.int64)
    assert abs(seconds_far - (expected + 19.5 * 86400)) < 1.0  # the mean of 40 days
    # translation in time changes nothing: the same field 2000 vs year
    a = far.predict(targets)["mean"].to_numpy()
    b = same.predict(near.iloc[:5][["x", "y", "when"]])["mean"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_timezone_aware_observations_with_naive_targets_are_refused(spacetime):
    """Before: silently 1-2 h off (aware converted to UTC, naive taken as UTC)."""
    obs, targets = frames("2024-01-01")
    obs = obs.assign(when=obs["when"].dt.tz_localize("Europe/Berlin"))
    conditioned = spacetime.condition(obs, values="v", space=("x", "y"), time="when")
    with pytest.raises(ValueError, match="observations' times carry a timezone but the "
                                         "targets' do not"):
        conditioned.predict(targets)
    aware = targets.assign(when=targets["when"].dt.tz_localize("Europe/Berlin"))
    assert np.isfinite(conditioned.predict(aware)["mean"]).all()


def test_non_finite_output_after_the_inverse_transform_is_refused():
    """Before: ``inf`` written with exit 0 (values spanning 1e-10..1e10 under log)."""
    predictor = tiny()
    rng = np.random.default_rng(1)
    obs = pd.DataFrame({"x": rng.uniform(0, 1, 60), "y": rng.uniform(0, 1, 60),
                        "v": 10.0 ** rng.uniform(-37, 37, 60)})
    targets = pd.DataFrame({"x": [0.5, 3.0], "y": [0.5, 3.0]})
    with pytest.raises(ValueError, match="inverse 'log' transform overflows float32"):
        predictor.predict(obs, targets, values="v", space=("x", "y"),
                          value_transform="log", interval=0.99)


def test_xarray_output_keeps_the_targets_dims_order_and_variables():
    """Before: dims transposed to the schema's order; the targets' variables dropped."""
    predictor = tiny(dim_x=1)
    rng = np.random.default_rng(2)
    obs = pd.DataFrame({"lon": rng.uniform(0, 1, 50), "lat": rng.uniform(0, 1, 50),
                        "elev": rng.normal(size=50), "v": rng.normal(size=50)})
    lat, lon = np.linspace(0, 1, 4), np.linspace(0, 1, 6)
    targets = xr.Dataset({"elev": (("lat", "lon"), rng.normal(size=(4, 6)))},
                         coords={"lon": lon, "lat": lat})
    out = predictor.predict(obs, targets, values="v", space=("lon", "lat"),
                            covariates="elev", interval=0.9)
    assert out["mean"].dims == ("lat", "lon") and out["lower"].shape == (4, 6)
    np.testing.assert_array_equal(out["elev"].values, targets["elev"].values)
    clash = targets.assign(mean=targets["elev"] * 0)
    with pytest.raises(ValueError, match=r"targets already have variable\(s\) \['mean'\]"):
        predictor.predict(obs, clash, values="v", space=("lon", "lat"), covariates="elev")


def test_a_damaged_model_is_blamed_not_the_data():
    """Before: NaN weights or a diverged model were reported as "normalise the data first"."""
    predictor = tiny()
    rng = np.random.default_rng(3)
    obs = pd.DataFrame({"x": rng.uniform(0, 1, 30), "y": rng.uniform(0, 1, 30),
                        "v": rng.normal(size=30)})
    targets = pd.DataFrame({"x": [0.2], "y": [0.3]})
    kw = {"values": "v", "space": ("x", "y")}
    with torch.no_grad():
        next(predictor.model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="the model is damaged: .* weight tensor"):
        predictor.predict(obs, targets, **kw)
    diverged = tiny()
    with torch.no_grad():
        for p in diverged.model.parameters():
            p.mul_(1e30)  # finite but huge: predictions overflow from moderate inputs
    with pytest.raises(ValueError, match="although its inputs are moderate"):
        diverged.predict(obs, targets, **kw)


def test_one_far_context_point_does_not_move_the_others_in_a_split_file(tmp_path):
    """Before: one coordinate at 1e12 moved every prediction by up to 0.115 (mean centring)."""
    from bsatnp import cli
    from bsatnp.io.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                   head_hidden=(8,), bias_s={"family": "exponential"})
    save_checkpoint(tmp_path / "m.safetensors", model)
    rng = np.random.default_rng(4)
    ctx, test = rng.uniform(0, 1, (30, 2)), rng.uniform(0, 1, (5, 2))
    f = rng.normal(size=30)
    outputs = []
    for far in (False, True):
        rows = ["split,s0,s1,f"] + [f"context,{a},{b},{c}" for (a, b), c in zip(ctx, f)]
        if far:  # a point so far away that the bias gives it no weight
            rows.append("context,1000000000000.0,0.0,0.0")
        rows += [f"test,{a},{b}," for a, b in test]
        (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
        assert cli.main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"), "--input",
                         str(tmp_path / "in.csv"), "--output", str(tmp_path / f"{far}.csv")]) == 0
        outputs.append(pd.read_csv(tmp_path / f"{far}.csv")["mean"].to_numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], atol=2e-3)


def test_targets_that_cannot_fit_in_memory_are_refused_before_any_work():
    """Before: a 1e10-point grid or 10,000 samples at 1e5 targets ended in MemoryError."""
    from bsatnp.data.tables import grid

    predictor = tiny()
    rng = np.random.default_rng(5)
    obs = pd.DataFrame({"x": rng.uniform(0, 1, 30), "y": rng.uniform(0, 1, 30),
                        "v": rng.normal(size=30)})
    conditioned = predictor.condition(obs, values="v", space=("x", "y"))
    huge = grid(x=(0, 1, 100_000), y=(0, 1, 100_000))  # 1e10 points, coordinates only
    with pytest.raises(ValueError, match=r"10,000,000,000 targets .* need about .* GiB"):
        conditioned.predict(huge)
    many = pd.DataFrame({"x": np.zeros(100_000), "y": np.zeros(100_000)})
    with pytest.raises(ValueError, match="fewer samples"):
        conditioned.predict(many, n_samples=1_000_000)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 0"):
        conditioned.predict(many, n_samples=-1)


def test_a_netcdf_declaring_more_than_memory_is_refused_unread(tmp_path):
    """Before: an 8 KB netCDF declaring an 8 GB variable ended in a MemoryError."""
    from bsatnp.data.files import read_table
    from bsatnp.data.tables import available_memory

    pytest.importorskip("h5netcdf")
    available = available_memory()
    if available is None:
        pytest.skip("no memory figure on this platform")
    side = int(np.sqrt(available / 8 * 2)) + 1  # twice the memory available, float64
    import h5py

    with h5py.File(tmp_path / "big.nc", "w") as file:  # a chunked, unwritten (sparse) array
        file.create_dataset("v", shape=(side, side), dtype="f8", chunks=(64, 64))
    assert (tmp_path / "big.nc").stat().st_size < 100_000
    with pytest.raises(ValueError, match="declare .* GiB but .* GiB of memory are available"):
        read_table(tmp_path / "big.nc")


def test_integer_column_labels_are_read():
    """Before: ``values=2, space=(0, 1)`` on a DataFrame with integer labels: a TypeError."""
    predictor = tiny()
    rng = np.random.default_rng(6)
    data = pd.DataFrame(rng.uniform(0, 1, (40, 3)))
    out = predictor.predict(data, data[[0, 1]], values=2, space=(0, 1))
    named = predictor.predict(data.rename(columns=str), data[[0, 1]].rename(columns=str),
                              values="2", space=("0", "1"))
    np.testing.assert_allclose(out["mean"].to_numpy(), named["mean"].to_numpy())


def test_a_regressor_over_a_classifier_says_so():
    """Before: the message listed every distinct y value as a 'class'."""
    from bsatnp.estimator import NeuralProcessRegressor

    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                   head_hidden=(8,), dim_f=3, likelihood="categorical")
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match="predicts categorical classes; NeuralProcessRegressor"):
        NeuralProcessRegressor(model).fit(rng.uniform(0, 1, (20, 2)), rng.normal(size=20))


def _space_time_files(tmp_path, obs_times, target_times):
    """A space-time checkpoint, and CSV observations and targets with these times as text."""
    from bsatnp.io.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "st.safetensors", BSATNP(
        num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
        head_hidden=(8,), dim_t=1))
    rng = np.random.default_rng(8)
    n, m = len(obs_times), len(target_times)
    pd.DataFrame({"x": rng.uniform(0, 1, n), "y": rng.uniform(0, 1, n), "when": obs_times,
                  "v": rng.normal(size=n)}).to_csv(tmp_path / "obs.csv", index=False)
    pd.DataFrame({"x": rng.uniform(0, 1, m), "y": rng.uniform(0, 1, m), "when": target_times}
                 ).to_csv(tmp_path / "targets.csv", index=False)
    return ["predict", "--checkpoint", str(tmp_path / "st.safetensors"), "--observations",
            str(tmp_path / "obs.csv"), "--values", "v", "--space", "x", "y", "--time", "when",
            "--targets", str(tmp_path / "targets.csv"), "--output", str(tmp_path / "out.csv"),
            "--quiet"]


def _hours(start, n, zone=None):
    stamps = pd.Timestamp(start, tz=zone) + pd.to_timedelta(np.arange(n), "h")
    return [str(stamp) for stamp in stamps]


def test_cli_times_with_a_zone_and_targets_without_one_are_refused(tmp_path, capsys):
    """Before: a CSV's '+01:00' times were read as UTC and naive targets as UTC too (1-2 h
    off, exit 0): the text column never became timezone-aware."""
    from bsatnp import cli

    berlin = _hours("2024-03-30 12:00", 40, "Europe/Berlin")  # +01:00, then +02:00 (DST)
    args = _space_time_files(tmp_path, berlin, _hours("2024-03-31 00:00", 4))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "observations' times carry a timezone but the targets' " \
        "do not" in err, err
    _space_time_files(tmp_path, berlin, berlin[:4])  # both zoned (two offsets): converted
    assert cli.main(args) == 0, capsys.readouterr().err
    mixed = _hours("2024-01-01", 40)
    mixed[3] = "2024-01-01T03:00:00+01:00"
    _space_time_files(tmp_path, mixed, _hours("2024-01-01", 4))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(
        r"time column 'when' mixes times with a timezone \('2024-01-01T03:00:00\+01:00' at "
        r"data row 4 of \S*obs.csv\) and without one \('2024-01-01 00:00:00' at data row 1 ",
        err), err


@pytest.mark.parametrize("where", ["observations", "targets"])
def test_cli_a_time_that_is_not_a_date_names_its_row(tmp_path, capsys, where):
    """Before: "time column 'time' must be numeric or datetime64, got object" (no row), or
    "Error parsing datetime string ... at position 0" (a position in the text)."""
    from bsatnp import cli

    obs, targets = _hours("2024-01-01", 40), _hours("2024-01-02", 4)
    (obs if where == "observations" else targets)[2] = "yesterday"
    args = _space_time_files(tmp_path, obs, targets)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    name = "obs" if where == "observations" else "targets"
    assert err.count("\n") == 1 and re.search(
        rf"{where}: time column 'when' holds 'yesterday' at data row 3 of \S*{name}.csv, "
        "which is not a date and time", err), err


@pytest.mark.parametrize("kind", ["datetimes", "numbers"])
@pytest.mark.parametrize("where", ["observations", "targets"])
def test_cli_an_empty_time_names_the_time_column_and_its_row(tmp_path, capsys, where, kind):
    """Before: "coordinate column 'when' is nan at data row 3 ...": a blank cell reported as
    a NaN coordinate."""
    from bsatnp import cli

    obs, targets = _hours("2024-01-01", 40), _hours("2024-01-02", 4)
    if kind == "numbers":
        obs, targets = [str(i) for i in range(40)], [str(i) for i in range(4)]
    (obs if where == "observations" else targets)[2] = ""
    args = _space_time_files(tmp_path, obs, targets)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    name = "obs" if where == "observations" else "targets"
    assert err.count("\n") == 1 and re.search(
        rf"{where}: time column 'when' is empty at data row 3 of \S*{name}.csv; every point "
        "needs a time", err), err


@pytest.mark.parametrize("field, value, message", [
    ("space_scale", (1e-300, 1e-300), r"observations: role 's' overflows float32 in model "
     r"units, although the data are within float32 \(largest \|s\| = [0-9.]+ in their "
     r"units\): the stored normaliser \(the checkpoint's\) maps them out of range"),
    ("value_scale", (1e300,), r"prediction 'mean' is not finite at 4 target\(s\): the stored "
     r"normaliser \(the checkpoint's\) maps moderate outputs .* value scale 1e\+300"),
])
def test_a_broken_normaliser_is_blamed_not_the_data(tmp_path, capsys, field, value, message):
    """Before: "role 's' overflows float32 after normalisation; check the units of that
    column" and "the values overflow float32 there: rescale them" for moderate data (and
    numpy's overflow warnings on stderr besides)."""
    from dataclasses import replace

    from bsatnp import cli

    predictor = tiny()
    rng = np.random.default_rng(9)
    obs = pd.DataFrame({"x": rng.uniform(0, 3, 30), "y": rng.uniform(0, 3, 30),
                        "v": rng.normal(size=30)})
    obs.to_csv(tmp_path / "obs.csv", index=False)
    obs.iloc[:4][["x", "y"]].to_csv(tmp_path / "targets.csv", index=False)
    predictor.fit_normalizer(obs, values="v", space=("x", "y"))
    predictor.normalizer = replace(predictor.normalizer, **{field: value})
    predictor.save(tmp_path / "broken.safetensors")
    code = cli.main(["predict", "--checkpoint", str(tmp_path / "broken.safetensors"),
                     "--observations", str(tmp_path / "obs.csv"), "--targets",
                     str(tmp_path / "targets.csv"), "--output", str(tmp_path / "out.csv"),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_the_cli_refuses_an_overflowing_inverse_transform_in_one_line(tmp_path, capsys):
    """Before: the refusal came after two lines of numpy's 'overflow encountered in cast'."""
    from bsatnp import cli
    from bsatnp.io.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.safetensors", tiny().model)
    rng = np.random.default_rng(1)
    obs = pd.DataFrame({"x": rng.uniform(0, 1, 60), "y": rng.uniform(0, 1, 60),
                        "v": 10.0 ** rng.uniform(-37, 37, 60)})
    obs.to_csv(tmp_path / "obs.csv", index=False)
    obs.iloc[:3][["x", "y"]].to_csv(tmp_path / "targets.csv", index=False)
    with warnings.catch_warnings():  # outside pytest they reach stderr: none may be raised
        warnings.simplefilter("error", RuntimeWarning)
        code = cli.main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"),
                         "--observations", str(tmp_path / "obs.csv"), "--values", "v",
                         "--space", "x", "y", "--transform", "log", "--targets",
                         str(tmp_path / "targets.csv"), "--interval", "0.99", "--output",
                         str(tmp_path / "out.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "inverse 'log' transform overflows float32" in err


def test_a_classifier_over_numeric_values_says_so_in_the_cli(tmp_path, capsys):
    """Before: "the model predicts 3 classes ...; the data have 1 value column(s) with
    classes ('-0.117...', '0.030...', ...) and 72 more": measurements listed as classes."""
    from bsatnp import cli
    from bsatnp.io.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c.safetensors", BSATNP(
        num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
        head_hidden=(8,), dim_f=3, likelihood="categorical"))
    rng = np.random.default_rng(10)
    obs = pd.DataFrame({"x": rng.uniform(0, 1, 30), "y": rng.uniform(0, 1, 30),
                        "v": rng.normal(size=30)})
    obs.to_csv(tmp_path / "obs.csv", index=False)
    obs.iloc[:3][["x", "y"]].to_csv(tmp_path / "targets.csv", index=False)
    code = cli.main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"),
                     "--observations", str(tmp_path / "obs.csv"), "--values", "v", "--space",
                     "x", "y", "--targets", str(tmp_path / "targets.csv"), "--output",
                     str(tmp_path / "out.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "this model is a classifier of 3 labels, but the value column 'v' holds numbers " \
           "(30 distinct)" in err
