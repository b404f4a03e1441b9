"""Your own data: schema, normaliser, containers in and out, streaming, bad input, estimator."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")

from bsatnp.data import Normalizer, Schema  # noqa: E402
from bsatnp.data.table_task import TableTask  # noqa: E402
from bsatnp.data.tables import grid, read_points  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.options import parse_bytes  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402

SMALL = dict(num_blocks=2, dim=32, qkv_dim=32, ffn_dim=64, embed_hidden=(64,),
             head_hidden=(64,))


def small_model(seed: int = 0, **overrides) -> BSATNP:
    torch.manual_seed(seed)
    return BSATNP(**{**SMALL, **overrides}).eval()


def stations(n: int = 120, seed: int = 0, lon=(116.0, 117.0), lat=(39.5, 40.5)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"lon": rng.uniform(*lon, n), "lat": rng.uniform(*lat, n)})
    frame["temp"] = 15 + 3 * np.sin(3 * frame["lon"]) + rng.normal(0, 0.3, n)
    return frame


def lonlat_predictor(**overrides) -> Predictor:
    return Predictor(small_model(**overrides))


ROLES = dict(values="temp", space=("lon", "lat"), crs="lonlat", units="degC")


# ------------------------------------------------------------------ outputs
def test_dataframe_out_keeps_index_and_columns_and_units_follow_the_values():
    obs = stations()
    targets = stations(7, seed=1)[["lon", "lat"]].set_axis(list("abcdefg"))
    conditioned = lonlat_predictor().condition(obs, **ROLES)
    out = conditioned.predict(targets, quantiles=(0.5,), interval=0.9, n_samples=3, seed=0)
    assert list(out.index) == list("abcdefg")
    pd.testing.assert_frame_equal(out[["lon", "lat"]], targets)  # copied, not round-tripped
    assert {"mean", "std", "q0.5", "lower", "upper", "sample_0", "sample_2"} <= set(out.columns)
    assert (out["lower"] < out["q0.5"]).all() and (out["q0.5"] < out["upper"]).all()
    np.testing.assert_allclose(out["q0.5"], out["mean"], rtol=1e-5)  # Normal: median = mean
    # Shifting every value by 1000 (units of the data) shifts the mean, never the std.
    shifted = obs.assign(temp=obs["temp"] + 1000.0)
    moved = lonlat_predictor().condition(shifted, **ROLES).predict(targets)
    np.testing.assert_allclose(moved["mean"] - out["mean"], 1000.0, atol=2e-3)
    np.testing.assert_allclose(moved["std"], out["std"], rtol=1e-5)
    # ... and scaling the values by 10 scales mean and std by 10.
    scaled = lonlat_predictor().condition(obs.assign(temp=10 * obs["temp"]), **ROLES)
    np.testing.assert_allclose(scaled.predict(targets)["std"], 10 * out["std"], rtol=1e-5)


def test_xarray_grid_out_has_the_template_coords_in_any_dim_order():
    obs = stations()
    conditioned = lonlat_predictor().condition(obs, **ROLES)
    template = grid(lon=(116.0, 117.0, 7), lat=(39.5, 40.5, 5))
    out = conditioned.predict(template, interval=0.9)
    assert out["mean"].dims == ("lon", "lat") and out["mean"].shape == (7, 5)
    np.testing.assert_array_equal(out["lon"].values, template["lon"].values)
    assert out["mean"].attrs["units"] == "degC"
    flipped = template.transpose("lat", "lon")
    data_array = xr.DataArray(np.zeros((5, 7)), coords={"lat": template["lat"],
                                                        "lon": template["lon"]},
                              dims=("lat", "lon"))
    for other in (flipped, data_array):
        again = conditioned.predict(other)
        np.testing.assert_allclose(again["mean"].transpose("lon", "lat").values,
                                   out["mean"].values, rtol=1e-6)


def test_chunked_equals_unchunked_and_memory_bound_sets_the_chunk():
    obs = stations(200)
    targets = stations(301, seed=5)[["lon", "lat"]]
    conditioned = lonlat_predictor().condition(obs, **ROLES)
    whole = conditioned.predict(targets, chunk_size=10_000)
    for options in ({"chunk_size": 1}, {"chunk_size": 37}, {"max_memory": "8MB"}):
        part = conditioned.predict(targets, **options)
        np.testing.assert_allclose(part["mean"], whole["mean"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(part["std"], whole["std"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="too small"):
        conditioned.predict(targets, max_memory=1000)
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30) and parse_bytes(2048) == 2048


def test_save_load_reproduces_predictions_exactly(tmp_path):
    obs = stations()
    predictor = lonlat_predictor()
    predictor.fit_normalizer(obs, **ROLES)
    targets = stations(20, seed=3)[["lon", "lat"]]
    before = predictor.predict(obs, targets, interval=0.8)
    loaded = Predictor.load(predictor.save(tmp_path / "p.safetensors"))
    assert loaded.schema == predictor.schema and loaded.normalizer == predictor.normalizer
    after = loaded.predict(obs, targets, interval=0.8)
    pd.testing.assert_frame_equal(before, after, check_exact=True)


def test_real_world_coordinates_are_exactly_translation_invariant():
    """Centring in float64 before the float32 cast: UTM-sized offsets change nothing."""
    rng = np.random.default_rng(2)
    local = pd.DataFrame({"x": rng.uniform(0, 50, 80), "y": rng.uniform(0, 50, 80)})
    local["v"] = np.cos(local["x"] / 10) + rng.normal(0, 0.1, 80)
    targets = pd.DataFrame({"x": rng.uniform(0, 50, 30), "y": rng.uniform(0, 50, 30)})
    far = local.assign(x=local["x"] + 5e5, y=local["y"] + 4e6)
    far_targets = targets.assign(x=targets["x"] + 5e5, y=targets["y"] + 4e6)
    predictor = Predictor(small_model())
    roles = dict(values="v", space=("x", "y"))
    near_out = predictor.predict(local, targets, **roles)
    far_out = predictor.predict(far, far_targets, **roles)
    np.testing.assert_array_equal(near_out[["mean", "std"]].to_numpy(),
                                  far_out[["mean", "std"]].to_numpy())


def test_targets_in_another_crs_are_converted():
    pytest.importorskip("pyproj")
    obs = stations()
    targets = stations(15, seed=9)[["lon", "lat"]]
    from bsatnp.data.geo import transform

    utm = transform(targets.to_numpy(), "lonlat", "EPSG:32650")
    utm_targets = pd.DataFrame(utm, columns=["lon", "lat"])
    conditioned = lonlat_predictor().condition(obs, **ROLES)
    direct = conditioned.predict(targets)
    converted = conditioned.predict(utm_targets, crs="EPSG:32650")
    np.testing.assert_allclose(converted["mean"], direct["mean"], atol=1e-4)
    # Undeclared projected targets are caught by the latitude range, naming the column.
    with pytest.raises(ValueError, match="latitude column 'lat' at index 0.*another|projected"):
        conditioned.predict(utm_targets)


def test_log_transform_gives_lognormal_moments_and_quantiles_through_the_transform():
    obs = stations()
    obs["pm25"] = np.exp(obs["temp"] / 5)
    roles = dict(values="pm25", space=("lon", "lat"), crs="lonlat")
    conditioned = lonlat_predictor().condition(obs, value_transform="log", **roles)
    out = conditioned.predict(stations(9, seed=4)[["lon", "lat"]], quantiles=(0.05, 0.5, 0.95))
    norm = conditioned.normalizer
    assert norm.value_transform == "log"
    median = out["q0.5"].to_numpy()
    # In log space the Normal is N(log median, s²) with s from the 5%/95% quantiles.
    s = (np.log(out["q0.95"]) - np.log(median)) / 1.6448536269514722
    np.testing.assert_allclose(out["mean"], np.exp(np.log(median) + s**2 / 2), rtol=1e-4)
    np.testing.assert_allclose(out["std"], np.sqrt(np.expm1(s**2)) * out["mean"], rtol=1e-4)
    assert (out["q0.05"] > 0).all()
    with pytest.raises(ValueError, match="needs values > 0.*'pm25'"):
        lonlat_predictor().condition(obs.assign(pm25=obs["pm25"] - 100), value_transform="log",
                                     **roles)


def test_categorical_model_returns_class_probabilities_and_labels():
    obs = stations()
    obs["state"] = np.where(obs["temp"] > 15, "warm", "cold")
    predictor = Predictor(small_model(likelihood="categorical", dim_f=2))
    out = predictor.predict(obs, stations(6, seed=2)[["lon", "lat"]], values="state",
                            space=("lon", "lat"), crs="lonlat")
    np.testing.assert_allclose(out["probability_cold"] + out["probability_warm"], 1, atol=1e-5)
    assert set(out["predicted_class"]) <= {"cold", "warm"}
    with pytest.raises(ValueError, match="predicts 3 classes.*classes .'cold', 'warm'."):
        Predictor(small_model(likelihood="categorical", dim_f=3)).condition(
            obs, values="state", space=("lon", "lat"), crs="lonlat")


@pytest.mark.parametrize("given, named", [(dict(value_transform="log"), "value_transform"),
                                          (dict(units="people"), "units")])
def test_categorical_conditioning_and_finetuning_refuse_numeric_options(tmp_path, given,
                                                                        named):
    """A value transform or units for class labels was taken silently by condition/finetune."""
    obs = stations()
    obs["state"] = np.where(obs["temp"] > 15, "warm", "cold")
    predictor = Predictor(small_model(likelihood="categorical", dim_f=2))
    roles = dict(values="state", space=("lon", "lat"), crs="lonlat")
    with pytest.raises(ValueError, match=f"^{named}: only for a model of numeric values"):
        predictor.condition(obs, **roles, **given)
    with pytest.raises(ValueError, match=f"^{named}: only for a model of numeric values"):
        predictor.finetune(obs, **roles, **given, steps=1, out_dir=tmp_path / "run",
                           progress=False)
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_time_and_covariates_from_datetimes_and_mapping_input():
    rng = np.random.default_rng(4)
    n = 90
    data = {"x": rng.uniform(0, 1, n), "y": rng.uniform(0, 1, n),
            "when": np.datetime64("2021-03-01T00") + rng.integers(0, 96, n).astype("m8[h]"),
            "elev": rng.uniform(0, 500, n), "v": rng.normal(size=n)}
    predictor = Predictor(small_model(dim_t=1, dim_x=1))
    conditioned = predictor.condition(data, values="v", space=("x", "y"), time="when",
                                      covariates="elev", time_scale="6h")
    assert conditioned.schema.time_kind == "datetime"
    assert conditioned.normalizer.time_scale == 6 * 3600
    out = conditioned.predict({k: data[k][:5] for k in ("x", "y", "when", "elev")})
    assert set(out) == {"mean", "std"} and out["mean"].shape == (5,)
    with pytest.raises(ValueError, match="holds numbers but the model was fitted on datetimes"):
        conditioned.predict({**{k: data[k][:5] for k in ("x", "y", "elev")},
                             "when": np.arange(5.0)})


# ---------------------------------------------------------------- bad input
def test_nan_values_are_dropped_with_a_counted_warning():
    obs = stations()
    obs.loc[[3, 7, 9], "temp"] = np.nan
    with pytest.warns(UserWarning, match="dropped 3 of 120 points with a missing value"):
        conditioned = lonlat_predictor().condition(obs, **ROLES)
    assert conditioned.n_context == 117
    obs["temp"] = np.nan
    with pytest.raises(ValueError, match="all 120 points have a missing value"):
        lonlat_predictor().condition(obs, **ROLES)


@pytest.mark.parametrize("case, message", [
    ("missing column", r"no column\(s\) \['temp'\]; the columns are"),
    ("nan coordinate", r"coordinate column 'lat' is nan at index 5"),
    ("latitude", r"latitude column 'lat' at index 2: 250 degrees|latitude column 'lat' at index 2"),
    ("empty", r"observations are empty"),
    ("inf value", r"value column 'temp' is inf at index 4"),
    ("not a table", r"must be a pandas DataFrame, an xarray"),
])
def test_bad_observations_raise_one_clear_error(case, message):
    obs = stations()
    if case == "missing column":
        obs = obs.drop(columns="temp")
    elif case == "nan coordinate":
        obs.loc[5, "lat"] = np.nan
    elif case == "latitude":
        obs.loc[2, "lat"] = 250.0
    elif case == "empty":
        obs = obs.iloc[:0]
    elif case == "inf value":
        obs.loc[4, "temp"] = np.inf
    elif case == "not a table":
        obs = [1, 2, 3]
    with pytest.raises(ValueError, match=message):
        lonlat_predictor().condition(obs, **ROLES)


@pytest.mark.parametrize("case, message", [
    ("nan coordinate", r"observations: coordinate column 'lat' is nan at row 6 \(counting "
                       r"from 1\);"),
    ("inf value", r"observations: value column 'temp' is inf at row 5 \(counting from 1\)$"),
    ("latitude", r"latitude column 'lat' at row 3 \(counting from 1\)"),
], ids=["nan coordinate", "inf value", "latitude"])
def test_mapping_inputs_name_their_rows_counting_from_1(case, message):
    """Before: a mapping of arrays named 0-based positions ("row 5" for the 6th entry)."""
    obs = {name: np.array(column) for name, column in stations().items()}
    column, row, value = {"nan coordinate": ("lat", 5, np.nan), "inf value": ("temp", 4, np.inf),
                          "latitude": ("lat", 2, 250.0)}[case]
    obs[column][row] = value
    with pytest.raises(ValueError, match=message):
        lonlat_predictor().condition(obs, **ROLES)


def test_schema_that_does_not_match_the_checkpoint_is_refused(tmp_path):
    predictor = lonlat_predictor()
    predictor.fit_normalizer(stations(), **ROLES)
    loaded = Predictor.load(predictor.save(tmp_path / "p.safetensors"))
    with pytest.raises(ValueError, match="does not match the model's.*values: given"):
        loaded.condition(stations().rename(columns={"temp": "t2m"}), values="t2m")
    with pytest.raises(ValueError, match=r"no column\(s\) \['temp'\]"):
        loaded.condition(stations().rename(columns={"temp": "t2m"}))
    with pytest.raises(ValueError, match="reads 2 space column"):
        Predictor(small_model()).condition(stations(), values="temp", space=("lon",))
    with pytest.raises(ValueError, match="targets: covariate 'elev' is nan"):
        model = Predictor(small_model(dim_x=1))
        obs = stations().assign(elev=1.0)
        model.condition(obs, covariates="elev", **ROLES).predict(
            obs[["lon", "lat", "elev"]].assign(elev=np.nan))


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyproj", None)  # as if not installed
    with pytest.raises(ImportError, match=r"'pyproj' package: pip install 'bsatnp\[geo\]'"):
        lonlat_predictor().condition(stations(), **ROLES)
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"pip install 'bsatnp\[data\]'"):
        grid(lon=(0, 1, 2))


# ------------------------------------------------------------ training tasks
@pytest.mark.parametrize("kind", ["random", "block", "time"])
def test_table_task_splits(kind):
    rng = np.random.default_rng(0)
    n = 400
    columns = {"s": torch.tensor(rng.uniform(-2, 2, (n, 2)), dtype=torch.float32),
               "t": torch.tensor(np.sort(rng.uniform(0, 1, n))[:, None], dtype=torch.float32),
               "f": torch.tensor(rng.normal(size=(n, 1)), dtype=torch.float32)}
    task = TableTask.from_columns(columns, kind, 0.2, torch.Generator().manual_seed(0),
                                  n_ctx=40, n_test=20, batch_size=3)
    train_rows = set(task.rows["train"].tolist())
    assert train_rows.isdisjoint(task.rows["valid"].tolist())
    batch = task.sample(torch.Generator().manual_seed(1), "train")
    batch.validate(required_roles=("s", "t"), need_f_test=True)
    assert batch.s_ctx.shape == (3, 40, 2) and batch.s_test.shape == (3, 20, 2)
    again = task.sample(torch.Generator().manual_seed(1), "train")
    assert torch.equal(batch.s_ctx, again.s_ctx)
    if kind == "time":  # a forecast: every context time precedes every test time
        assert bool((batch.t_ctx.amax(1) <= batch.t_test.amin(1)).all())
        valid = task.sample(torch.Generator().manual_seed(2), "valid")
        assert float(valid.t_ctx.min()) >= float(batch.t_ctx.min())
    if kind == "block":  # test points form a compact block the context does not enter
        for b in range(3):
            centre_reach = (batch.s_test[b] - batch.s_test[b].mean(0)).abs().amax()
            assert centre_reach < 2.0
            lo, hi = batch.s_test[b].amin(0), batch.s_test[b].amax(0)
            inside = ((batch.s_ctx[b] > lo) & (batch.s_ctx[b] < hi)).all(-1)
            assert int(inside.sum()) == 0


def test_finetune_keeps_schema_and_normaliser_and_improves_validation(tmp_path):
    rng = np.random.default_rng(1)
    n = 600
    data = pd.DataFrame({"x": rng.uniform(0, 1000, n), "y": rng.uniform(0, 1000, n)})
    data["v"] = 20 + 5 * np.sin(data["x"] / 150) + rng.normal(0, 0.2, n)
    predictor = Predictor(small_model())
    tuned = predictor.finetune(data, values="v", space=("x", "y"), steps=30, lr=1e-3,
                               n_ctx=64, n_test=64, out_dir=tmp_path, progress=False,
                               val_every=10)
    assert tuned.schema.values == ("v",) and tuned.normalizer is not None
    assert tuned.normalizer.value_shift[0] == pytest.approx(data["v"].mean(), rel=1e-6)
    import json

    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    val = [r["val_nll"] for r in log if "val_nll" in r]
    assert len(val) == 4 and min(val[1:]) < val[0]  # steps 0 (the start), 10, 20, 30
    loaded = Predictor.load(tmp_path / "best.safetensors")
    assert loaded.schema == tuned.schema and loaded.normalizer == tuned.normalizer
    out = loaded.predict(data.iloc[:200], data.iloc[200:210][["x", "y"]])
    assert out["mean"].between(5, 35).all()


# ----------------------------------------------------------------- estimator
def test_estimator_works_in_cross_val_score():
    sklearn = pytest.importorskip("sklearn.model_selection")
    from bsatnp.estimator import NeuralProcessRegressor

    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (90, 2))
    y = np.sin(X[:, 0]) + rng.normal(0, 0.1, 90)
    est = NeuralProcessRegressor(model=small_model())
    scores = sklearn.cross_val_score(est, X, y, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    est.fit(X, y)
    mean, std = est.predict(X[:4], return_std=True)
    assert mean.shape == std.shape == (4,) and (std > 0).all()
    assert est.sample_y(X[:4], n_samples=5).shape == (4, 5)
    assert est.set_params(chunk_size=2).get_params()["chunk_size"] == 2
    with pytest.raises(ValueError, match=r"X must be \[N, 2\]"):
        est.predict(X[:, :1])


def test_normalizer_round_trips_and_validates():
    norm = Normalizer(value_shift=(1.0,), value_scale=(2.0,), space_shift=(3.0, 4.0),
                      space_scale=(5.0, 5.0))
    assert Normalizer.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="value_scale must be finite and > 0"):
        Normalizer(value_scale=(0.0,))
    with pytest.raises(ValueError, match="given more than one role"):
        Schema(values=("a",), space=("a", "b"))
    points, _ = read_points({"a": [1.0, 2.0], "b": [0.0, 0.0], "v": [1.0, 3.0]},
                            Schema(values=("v",), space=("a", "b")), "observations", True)
    fitted = Normalizer.fit(points, Schema(values=("v",), space=("a", "b")))
    assert fitted.value_shift == (2.0,) and fitted.value_scale == (1.0,)
    assert fitted.space_shift == (1.5, 0.0) and fitted.space_scale == (0.25, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Normalizer.fit(points, Schema(values=("v",), space=("a", "b")), method="minmax")


def test_loading_and_predicting_need_no_extra(tmp_path):
    """Core only: a checkpoint loads and predicts from arrays without pandas, xarray, yaml."""
    import subprocess

    predictor = lonlat_predictor()
    predictor.fit_normalizer(stations(), **ROLES)
    path = predictor.save(tmp_path / "p.safetensors")
    obs = stations()
    np.savez(tmp_path / "obs.npz", **{k: obs[k].to_numpy() for k in obs})
    code = (
        "import sys\n"
        "for name in ('pandas', 'xarray', 'yaml', 'matplotlib', 'scipy', 'sklearn'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from bsatnp import Predictor\n"
        f"data = dict(np.load({str(tmp_path / 'obs.npz')!r}))\n"
        f"predictor = Predictor.load({str(path)!r})\n"
        "out = predictor.predict(data, {'lon': data['lon'][:3], 'lat': data['lat'][:3]})\n"
        "print(sorted(out), out['mean'].shape)\n")  # lon/lat → km still uses the geo extra
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['mean', 'std'] (3,)"


def test_observations_far_outside_the_cards_envelope_warn():
    card = {"envelope": {"space_half_width": 2.0, "task": {"min_ctx": 128, "max_ctx": 511}}}
    predictor = Predictor(small_model(), card=card)
    with pytest.warns(UserWarning, match="10 observations; this model was trained on 128-511"):
        conditioned = predictor.condition(stations(10), **ROLES)
    assert conditioned.warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not predictor.condition(stations(200), **ROLES).warnings


def test_lonlat_for_a_euclidean_model_is_projected_to_km_and_for_a_great_circle_model_kept():
    pytest.importorskip("pyproj")
    obs = stations(50)
    euclidean = lonlat_predictor().condition(obs, **ROLES)
    norm = euclidean.normalizer
    assert "+proj=aeqd" in norm.projection and "+units=km" in norm.projection
    s = norm.space(obs[["lon", "lat"]].to_numpy(), "lonlat") * np.asarray(norm.space_scale)
    # Model-unit distances × the scale are kilometres: compare with the haversine distance.
    lon, lat = np.radians(obs["lon"].to_numpy()), np.radians(obs["lat"].to_numpy())
    h = np.sin((lat[1] - lat[0]) / 2) ** 2 + np.cos(lat[0]) * np.cos(lat[1]) * np.sin(
        (lon[1] - lon[0]) / 2) ** 2
    km = 2 * 6371.0 * np.arcsin(np.sqrt(h))
    assert np.linalg.norm(s[1] - s[0]) == pytest.approx(km, rel=2e-3)
    # The data's half-extent maps onto the model's box half-width (2): |s| <= ~2.
    assert np.abs(norm.space(obs[["lon", "lat"]].to_numpy(), "lonlat")).max() <= 2.0 + 1e-9
    geodesic = Predictor(small_model(bias_s={"role": "s", "distance": "great_circle_degrees"}))
    kept = geodesic.condition(obs, **ROLES).normalizer
    assert kept.projection is None and kept.space_scale == (1.0, 1.0)
    np.testing.assert_array_equal(kept.space(obs[["lon", "lat"]].to_numpy(), "lonlat"),
                                  obs[["lon", "lat"]].to_numpy())
    with pytest.raises(ValueError, match="declare the coordinates' crs"):
        geodesic.condition(obs, values="temp", space=("lon", "lat"))


def test_quantiles_at_the_interval_ends_are_kept():
    conditioned = lonlat_predictor().condition(stations(), **ROLES)
    out = conditioned.predict(stations(4, seed=8)[["lon", "lat"]], quantiles=(0.05,),
                              interval=0.9)
    np.testing.assert_allclose(out["q0.05"], out["lower"], rtol=1e-6)


@pytest.mark.parametrize("max_memory", [None, "2GB"])
def test_a_memory_bound_keeps_the_compiler_out(monkeypatch, max_memory):
    """Compiling mid-run loaded ~100 MB of compiler past --max-memory (10⁷ grid targets
    peaked at 613 MB under 500MB); under a bound every bias profile runs eagerly, and the
    fused C++ kernels (built by a compiler too) stay out."""
    from bsatnp.attention import compiled, fused_cpu

    calls = []
    monkeypatch.setenv("BSATNP_COMPILE", "1")  # compile at once, not after a warm-up
    monkeypatch.setattr(torch, "compile", lambda fn, **_: calls.append(fn) or fn)
    attention = fused_cpu.attention
    monkeypatch.setattr(fused_cpu, "attention",
                        lambda *args: calls.append(attention) or attention(*args))
    shipped = Predictor.from_pretrained("gp2d")  # its RBF heads take the compiled profile
    conditioned = shipped.condition(stations(60), **ROLES)
    for profile in (compiled.exp_family, compiled.tisa):  # as if nothing had compiled yet
        monkeypatch.setattr(profile, "compiled", None)
        monkeypatch.setattr(profile, "failed", False)
    calls.clear()
    out = conditioned.predict(stations(30, seed=1)[["lon", "lat"]], max_memory=max_memory)
    assert np.isfinite(out["mean"]).all()
    assert (len(calls) > 0) == (max_memory is None)
