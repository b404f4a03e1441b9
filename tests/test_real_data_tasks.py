"""The real-data tasks (PROTOCOLS §7 ERA5, §8 Beijing): splits, scaling, batches, models.

Skipped when pandas, scipy or the data folder ($BSATNP_DATA or ../shared/data) is missing.
"""

from __future__ import annotations

import gzip
from dataclasses import replace

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
netcdf = pytest.importorskip("scipy.io")

from bsatnp.experiment import load_experiment  # noqa: E402
from bsatnp.models.registry import build_model  # noqa: E402
from bsatnp.tasks import task_names  # noqa: E402
from bsatnp.tasks.beijing import DATASET, FEATURES, BeijingTask  # noqa: E402
from bsatnp.tasks.era5 import FILE, Era5Task  # noqa: E402
from bsatnp.tasks.real_data import DATA_ENV, data_dir  # noqa: E402

try:
    DATA = data_dir()
except FileNotFoundError:
    pytest.skip("no real-data folder ($BSATNP_DATA or ../shared/data)", allow_module_level=True)
if not (DATA / DATASET).is_dir() or not (DATA / "era5" / FILE).is_file():
    pytest.skip(f"{DATA} lacks {DATASET}/ or era5/{FILE}", allow_module_level=True)

SMALL_MODEL = {"dim": 16, "num_blocks": 1, "qkv_dim": 16, "ffn_dim": 32, "embed_hidden": (32,),
               "head_hidden": (32,)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_data_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=DATA_ENV):
        data_dir()


def test_both_tasks_are_registered():
    assert {"beijing", "era5"} <= set(task_names())


# ------------------------------------------------------------------------------------ Beijing
def test_beijing_splits_are_chronological_disjoint_and_scaled_on_train():
    data = BeijingTask().data()
    train, valid, test = (data.splits[k] for k in ("train", "valid", "test"))
    n = len(train) + len(valid) + len(test)
    assert n == 382168  # 12 × 35064 rows, minus those with any NA
    assert abs(len(train) - 0.8 * n) <= 12 and abs(len(valid) - 0.1 * n) <= 12
    assert train.seconds.max() < valid.seconds.min()
    assert valid.seconds.max() < test.seconds.min()
    for rows in (train, valid, test):  # sorted by time, then station
        assert np.all(np.diff(rows.seconds) >= 0)
        same = np.diff(rows.seconds) == 0
        assert np.all(np.diff(rows.station)[same] > 0)
    for key in "xstf":
        values = getattr(train, key)
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert train.f.min(0).tolist() == [0, 0] and train.f.max(0).tolist() == [1, 1]
    assert train.x.shape == (len(train), len(FEATURES)) == (len(train), 27)
    assert np.all(train.x[:, 11:].sum(1) == 1)  # one wind direction per row
    assert valid.t.min() > 1 and test.t.min() > valid.t.max()


def test_beijing_to_physical_inverts_the_scaling_of_raw_rows():
    task = BeijingTask()
    data = task.data()
    folder = DATA / DATASET
    first = pd.read_csv(folder / "PRSA_Data_Aotizhongxin_20130301-20170228.csv.gz", nrows=1)
    last = pd.read_csv(folder / "PRSA_Data_Wanshouxigong_20130301-20170228.csv.gz").iloc[-1]
    # Sorted by time then station: Aotizhongxin's first hour opens the table, Wanshouxigong's
    # last hour closes it.
    for rows, raw, name in ((data.splits["train"], first.iloc[0], "Aotizhongxin"),
                            (data.splits["test"], last, "Wanshouxigong")):
        index = 0 if rows is data.splits["train"] else -1
        assert data.stations[rows.station[index]] == name
        want = [raw["PM2.5"], raw["PM10"]]
        assert task.to_physical(rows.f[index]) == pytest.approx(want, abs=1e-3)
        as_tensor = task.to_physical(torch.from_numpy(rows.f[index]).double())
        assert as_tensor.tolist() == pytest.approx(want, abs=1e-3)
    lo, hi = task.target_scale()
    assert lo.shape == hi.shape == (2,) and np.all(hi > lo)
    stations = pd.read_csv(folder / "stations.csv").set_index("station")
    lat_lon = data.s_lo + data.splits["train"].s[0] * (data.s_hi - data.s_lo)
    assert lat_lon == pytest.approx(stations.loc["Aotizhongxin", ["lat", "lon"]].tolist())
    assert data.splits["train"].t[0, 0] == 0 and data.splits["train"].x[0, 3] == 0  # hour 0


def test_beijing_batches_are_windows_of_consecutive_rows():
    task = BeijingTask(batch_size=4)
    roles = task.model_defaults()
    assert roles == {"dim_x": 27, "dim_s": 2, "dim_t": 1, "dim_f": 2, "likelihood": "gaussian"}
    data = task.data()
    for split in ("train", "valid", "test"):
        batch = task.sample(_gen(0), split)
        batch.validate(required_roles=("x", "s", "t"), need_f_test=True)
        for role in "xstf":
            assert batch.ctx(role).shape == (4, 624, roles[f"dim_{role}"])
            assert batch.test(role).shape == (4, 84, roles[f"dim_{role}"])
        assert batch.mask_ctx.shape == (4, 624) and bool(batch.mask_ctx.all())
        rows = data.splits[split]
        table = np.concatenate([rows.x, rows.s, rows.t, rows.f], axis=1)
        windows = torch.cat([torch.cat([batch.ctx(r), batch.test(r)], 1) for r in "xstf"], -1)
        t = windows[..., 27 + 2]
        assert len(set(t[:, 0].tolist())) == 4  # distinct window starts
        assert bool((t[:, 1:] >= t[:, :-1]).all())  # time order, context before test
        for b in range(4):  # every window is 708 consecutive rows of the split
            hour = np.flatnonzero(rows.t[:, 0] == float(t[b, 0]))  # rows of its first hour
            assert any(torch.equal(windows[b], torch.from_numpy(table[g:g + 708]))
                       for g in hour)
        if split == "train":
            assert float(t.max()) <= 1
        else:
            assert float(t.min()) > 1


def test_beijing_batches_are_deterministic():
    task = BeijingTask(batch_size=3)
    a, b, c = task.sample(_gen(5)), task.sample(_gen(5)), task.sample(_gen(6))
    for name in ("x_ctx", "s_ctx", "t_ctx", "f_ctx", "x_test", "f_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.t_ctx, c.t_ctx)
    with pytest.raises(ValueError, match="split"):
        task.sample(_gen(0), "validation")


# --------------------------------------------------------------------------------------- ERA5
def _hours(task: Era5Task, t: torch.Tensor) -> torch.Tensor:
    """Hours since 2019-03-01 00:00 of standardised times (training statistics)."""
    data = task.data()
    train = data.hours[(data.day >= task.train_days[0]) & (data.day <= task.train_days[1])]
    return torch.round(t.double() * train.std() + train.mean())


def test_era5_batches_forecast_the_frame_after_four_6_hourly_frames():
    task = Era5Task()
    roles = task.model_defaults()
    assert roles == {"dim_x": 1, "dim_s": 2, "dim_t": 1, "dim_f": 1, "likelihood": "gaussian"}
    data = task.data()
    for seed, split in enumerate(("train", "valid", "test", "train", "train")):
        batch = task.sample(_gen(seed), split)
        batch.validate(required_roles=("x", "s", "t"), need_f_test=True)
        for role in "xstf":
            assert batch.ctx(role).shape == (8, 900, roles[f"dim_{role}"])
            assert batch.test(role).shape == (8, 900, roles[f"dim_{role}"])
        hours_ctx = _hours(task, batch.t_ctx[..., 0]).reshape(8, 4, 225)
        hours_test = _hours(task, batch.t_test[..., 0])
        assert bool((hours_ctx == hours_ctx[..., :1]).all())  # one time per frame
        frames = torch.cat([hours_ctx[..., 0], hours_test[:, :1]], 1)  # [B, 5]
        assert bool((hours_test == hours_test[:, :1]).all())
        assert bool((frames.diff(dim=1) == 6).all())
        assert len(set((frames % 6).flatten().tolist())) == 1  # one phase per batch
        hour_of_day = torch.cat([batch.x_ctx, batch.x_test], 1)[..., 0] * 23
        all_hours = torch.cat([hours_ctx.flatten(1), hours_test], 1)
        assert torch.allclose(hour_of_day.double(), all_hours % 24, atol=1e-4)
        lo, hi = dict(zip(("train", "valid", "test"),
                          (task.train_days, task.valid_days, task.test_days)))[split]
        days = frames // 24 + 1
        assert bool(((days >= lo) & (days <= hi)).all())  # the window lies in its period
        counts = batch.mask_ctx.reshape(8, 4, 225).sum(-1)
        assert bool(((counts >= 45) & (counts <= 224)).all())
        for name in ("s_ctx", "mask_ctx", "s_test"):  # shared by the batch's tasks
            value = getattr(batch, name)
            assert torch.equal(value, value[:1].expand_as(value))
        # The test set is a 30×30 block of grid cells, which holds every context cell.
        rows = {float(v) for v in batch.s_test[0, :, 0]}
        cols = {float(v) for v in batch.s_test[0, :, 1]}
        assert len(rows) == len(cols) == 30
        assert len({tuple(p) for p in batch.s_test[0].tolist()}) == 900
        lat = data.lat.tolist()
        first = lat.index(max(rows))
        assert sorted(rows, reverse=True) == lat[first:first + 30]  # contiguous rows
        assert {tuple(p) for p in batch.s_ctx[0].tolist()} <= {
            tuple(p) for p in batch.s_test[0].tolist()}
        # Context cells of a frame are distinct.
        cells = batch.s_ctx[0].reshape(4, 225, 2)
        assert all(len({tuple(p) for p in frame.tolist()}) == 225 for frame in cells)


def test_era5_values_are_the_file_values_standardised():
    task = Era5Task(batch_size=2)
    data = task.data()
    batch = task.sample(_gen(3), "test")
    with gzip.open(DATA / "era5" / FILE) as raw, netcdf.netcdf_file(raw, mmap=False) as nc:
        t2m = np.array(nc.variables["t2m"][:], dtype=np.float64)
        lat, lon = np.array(nc.variables["latitude"][:]), np.array(nc.variables["longitude"][:])
    hours = _hours(task, batch.t_test[..., 0]).long()
    for b, k in ((0, 0), (1, 437), (1, 899)):
        i = int(np.flatnonzero(np.isclose(data.lat, float(batch.s_test[b, k, 0])))[0])
        j = int(np.flatnonzero(np.isclose(data.lon, float(batch.s_test[b, k, 1])))[0])
        kelvin = float(task.to_physical(batch.f_test[b, k, 0].double()))
        assert kelvin == pytest.approx(t2m[int(hours[b, k]), i, j], abs=1e-3)
        assert data.lat_deg[i] == lat[i] and data.lon_deg[j] == lon[j]
    train = t2m[:21 * 24]
    assert data.f_mean == pytest.approx(train.mean()) and data.f_std == pytest.approx(train.std())
    for axis in (data.lat, data.lon):
        assert abs(float(axis.mean())) < 1e-5 and float(axis.std()) == pytest.approx(1, abs=1e-5)


def test_era5_batches_are_deterministic():
    task = Era5Task(batch_size=2)
    a, b, c = task.sample(_gen(9)), task.sample(_gen(9)), task.sample(_gen(10))
    for name in ("x_ctx", "s_ctx", "t_ctx", "f_ctx", "mask_ctx", "s_test", "f_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.f_test, c.f_test)
    with pytest.raises(ValueError, match="disjoint"):
        Era5Task(valid_days=(20, 25))


# ------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("config", ["beijing", "era5"])
def test_tiny_bsatnp_from_the_bundled_config_predicts_finite_values(config):
    experiment = load_experiment(config)
    if config == "beijing":
        assert experiment.model.embedded_roles == ("x", "s", "t")
        assert experiment.train.final_lr_factor == 1e-5 and experiment.train.batch_size == 32
    else:
        assert experiment.model.embedded_roles == ("x",)
        assert experiment.train.final_lr_factor == 1.0 and experiment.train.lr == 5e-4
    assert [(b.role, b.num_basis) for b in experiment.model.bias_specs] == [("s", 5), ("t", 3)]
    model_config = replace(experiment.model, **SMALL_MODEL)
    torch.manual_seed(0)
    model = build_model(model_config)
    task = experiment.task.with_batch_size(2)
    batch = task.sample(_gen(0), "valid")
    with torch.no_grad():
        dist = model(batch)
    dim_f = task.model_defaults()["dim_f"]
    assert dist.mean.shape == dist.stddev.shape == (2, batch.n_test, dim_f)
    assert bool(torch.isfinite(dist.mean).all() and (dist.stddev > 0).all())
