"""Local conditioning: neighbourhoods, tiles, frames, and gap-shaped fine-tuning tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("scipy")

from bsatnp.data.neighbours import NeighbourSearch, WindowedSearch, unit_vectors  # noqa: E402
from bsatnp.data.table_task import TableTask  # noqa: E402
from bsatnp.locally_conditioned import LocallyConditioned  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402
from bsatnp.tasks.frames import LocalFrame  # noqa: E402


def brute_nearest(points: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(((points - query) ** 2).sum(-1), kind="stable")[:k]


@pytest.mark.parametrize("k, per_target", [(40, 8), (5, 5), (3, 8)])
def test_neighbourhoods_equal_a_brute_force_search(k, per_target):
    rng = np.random.default_rng(0)
    obs = np.concatenate([rng.uniform(0, 10, (300, 2)), rng.normal(5, 0.2, (100, 2))])
    targets = rng.uniform(-1, 11, (500, 2))
    search = NeighbourSearch(obs, k, per_target=per_target)
    seen = []
    for tile in search.tiles(targets, max_targets=37):
        assert 1 <= len(tile.targets) <= 37
        seen.append(tile.targets)
        context = set(tile.context.tolist())
        assert len(context) == len(tile.context) <= k  # no duplicate, capped
        required = set()
        for target in targets[tile.targets]:
            required |= set(brute_nearest(obs, target, min(per_target, k)).tolist())
        centre = targets[tile.targets].mean(0)
        if len(required) >= k:  # the closest to the centre among the targets' own nearest
            distance = np.linalg.norm(obs[list(required)] - centre, axis=1)
            assert context == {sorted(required)[i] for i in np.argsort(distance)[:k]} or \
                len(context) == k and context <= required
        else:  # every target's nearest, filled up with the nearest to the centre
            assert required <= context and len(context) == k
            fill = [i for i in brute_nearest(obs, centre, len(obs)) if i not in required]
            assert context - required == set(fill[: k - len(required)])
    every = np.concatenate(seen)
    assert np.array_equal(np.sort(every), np.arange(len(targets)))  # each target once


def test_neighbourhoods_of_a_great_circle_model_cross_the_dateline():
    lonlat = np.array([[179.9, 0.0], [-179.9, 0.0], [0.0, 0.0], [90.0, 0.0]])
    search = NeighbourSearch(unit_vectors(lonlat), 2, per_target=2)
    (tile,) = search.tiles(unit_vectors(np.array([[180.0, 0.0]])))
    assert set(tile.context.tolist()) == {0, 1}


@pytest.mark.parametrize("bad, message", [(0, "positive integer"), (-3, "positive integer"),
                                          (2.5, "positive integer"), (True, "positive integer")])
def test_bad_neighbour_counts_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        NeighbourSearch(np.zeros((3, 2)), bad)


@pytest.mark.parametrize("window", [0.0, 1.0, 2.5])
def test_windowed_neighbourhoods_are_the_spatial_ones_among_the_window(window):
    rng = np.random.default_rng(3)
    obs, obs_t = rng.uniform(0, 10, (600, 2)), rng.integers(0, 12, 600).astype(float)
    obs_t[:50] += 0.5  # a few off the hours
    targets, target_t = rng.uniform(0, 10, (300, 2)), rng.integers(2, 9, 300).astype(float)
    search = WindowedSearch(obs, obs_t, 20, window, per_target=4)
    seen = []
    for tile in search.tiles(targets, target_t, max_targets=25):
        (time,) = set(target_t[tile.targets].tolist())  # one time per tile
        inside = np.flatnonzero(np.abs(obs_t - time) <= window)
        assert set(tile.context.tolist()) <= set(inside.tolist())
        # the same neighbourhood as a spatial search over the window's observations alone
        alone = NeighbourSearch(obs[inside], 20, per_target=4)
        assert np.array_equal(tile.context, inside[alone.context(targets[tile.targets])])
        seen.append(tile.targets)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(targets)))


def test_a_time_window_without_observations_or_below_zero_is_refused():
    search = WindowedSearch(np.zeros((3, 2)), np.array([0.0, 1.0, 2.0]), 2, 0.5)
    with pytest.raises(ValueError, match="1 target.* at time 9 have no observation"):
        list(search.tiles(np.zeros((2, 2)), np.array([0.0, 9.0])))
    with pytest.raises(ValueError, match="finite and >= 0"):
        WindowedSearch(np.zeros((3, 2)), np.zeros(3), 2, -1.0)


def test_local_frame_maps_the_context_onto_the_box_and_back():
    rng = np.random.default_rng(1)
    s, f = rng.uniform([100, 50], [104, 51], (60, 2)), rng.normal(20, 3, (60, 1))
    frame = LocalFrame.fit(s, f, 2.0)
    framed = frame.space(s)
    assert np.isclose(np.abs(framed).max(), 2.0) and np.isclose(framed[:, 0].min(), -2.0)
    assert np.allclose(frame.values(f).mean(0), 0) and np.allclose(frame.values(f).std(0), 1)
    same = LocalFrame.fit(np.ones((5, 2)), np.full((5, 1), 7.0), 2.0)  # one place, one value
    assert same.factor == 1.0 and same.scale[0] == 1.0


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
                            head_hidden=(32,)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    obs = pd.DataFrame({"x": rng.uniform(0, 30, 400), "y": rng.uniform(0, 10, 400)})
    obs["v"] = 50 + 5 * np.sin(obs["x"] / 3) + rng.normal(0, 0.3, 400)
    targets = pd.DataFrame({"x": rng.uniform(0, 30, 700), "y": rng.uniform(0, 10, 700)},
                           index=pd.RangeIndex(1000, 1700, name="id"))
    return obs, targets


def test_local_equals_global_when_k_covers_every_observation(predictor, data):
    obs, targets = data
    kw = {"values": "v", "space": ("x", "y"), "interval": 0.9}
    whole = predictor.predict(obs, targets, neighbours=None, **kw)
    for k in (400, 10_000):
        local = predictor.predict(obs, targets, neighbours=k, chunk_size=97, **kw)
        for column in ("mean", "std", "lower", "upper"):
            np.testing.assert_allclose(local[column], whole[column], rtol=1e-5, atol=1e-5)
        assert local.index.equals(targets.index)


def test_local_predictions_come_back_in_the_targets_order(predictor, data):
    obs, targets = data
    kw = {"values": "v", "space": ("x", "y"), "neighbours": 32}
    out = predictor.predict(obs, targets, **kw)
    reversed_out = predictor.predict(obs, targets.iloc[::-1], **kw)
    assert out.index.equals(targets.index)
    np.testing.assert_array_equal(out[["x", "y"]].to_numpy(), targets.to_numpy())
    # a target's tile changes with the order of the others only through its cell: same cells
    np.testing.assert_allclose(reversed_out["mean"].to_numpy()[::-1], out["mean"].to_numpy(),
                               rtol=1e-5, atol=1e-5)
    assert np.isfinite(out["std"]).all()


def test_local_conditioning_is_the_default_past_the_envelope(data):
    obs, targets = data
    torch.manual_seed(0)
    card = {"envelope": {"task": {"n_ctx": 100}}}
    model = BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
                   head_hidden=(32,))
    conditioned = Predictor(model, card=card).condition(obs, values="v", space=("x", "y"))
    assert isinstance(conditioned, LocallyConditioned) and conditioned.neighbours == 100
    conditioned = Predictor(model, card=card).condition(obs.iloc[:90], values="v",
                                                        space=("x", "y"))
    assert not isinstance(conditioned, LocallyConditioned)
    with pytest.raises(ValueError, match="neighbours must be"):
        Predictor(model).condition(obs, values="v", space=("x", "y"), neighbours=0)


def test_a_model_trained_on_framed_tasks_is_always_used_through_frames(data):
    obs, _ = data
    torch.manual_seed(0)
    card = {"envelope": {"task": {"n_ctx": 100}, "framed": True}}
    model = BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
                   head_hidden=(32,))
    many = Predictor(model, card=card).condition(obs, values="v", space=("x", "y"))
    assert isinstance(many, LocallyConditioned) and many.neighbours == 100 and many.rescale
    few = Predictor(model, card=card).condition(obs.iloc[:90], values="v", space=("x", "y"))
    assert isinstance(few, LocallyConditioned) and few.neighbours == 90 and few.rescale


def test_duplicate_or_coincident_observations_give_finite_predictions(predictor):
    obs = pd.DataFrame({"x": [1.0] * 50, "y": [2.0] * 50, "v": np.linspace(0, 1, 50)})
    out = predictor.predict(obs, pd.DataFrame({"x": [1.0, 5.0], "y": [2.0, 2.0]}),
                            values="v", space=("x", "y"), neighbours=8)
    assert np.isfinite(out[["mean", "std"]].to_numpy()).all()


def gap_task(n=2000, **fields):
    generator = torch.Generator().manual_seed(0)
    s = torch.rand(n, 2, generator=generator) * 10
    columns = {"s": s, "f": torch.sin(s[:, :1]) * 3 + 5}
    return TableTask.from_columns(columns, "gap", 0.1, generator, **fields)


def test_gap_tasks_are_framed_holes():
    task = gap_task(n_ctx=64, n_test=16, batch_size=6)
    batch = task.sample(torch.Generator().manual_seed(1))
    assert batch.s_ctx.shape == (6, 64, 2) and batch.s_test.shape == (6, 16, 2)
    for b in range(6):  # the context spans the box; its values have mean 0 and std 1
        assert torch.isclose(batch.s_ctx[b].abs().max(), torch.tensor(2.0))
        assert abs(float(batch.f_ctx[b].mean())) < 1e-4
        assert abs(float(batch.f_ctx[b].std(unbiased=False)) - 1) < 1e-3
        assert 1 <= int(batch.mask_test[b].sum()) <= 16
    generator = torch.Generator().manual_seed(2)
    masks = torch.cat([task.sample(generator).mask_test for _ in range(8)])
    assert not bool(masks.all())  # holes smaller than n_test occur too


@pytest.mark.parametrize("seed", range(5))
def test_gap_holes_are_contiguous_and_ringed_by_their_context(seed):
    task = gap_task(n_ctx=64, n_test=16)
    rows = task.rows["train"]
    hole, context, test = task.gap(rows, 64, 16, torch.Generator().manual_seed(seed))
    s = task.columns["s"]
    assert set(test.tolist()) <= set(hole.tolist()) and len(test) == min(16, len(hole))
    assert not set(context.tolist()) & set(hole.tolist()) and len(context) == 64
    # one centre row from which every hole row is nearer than every context row, and the
    # context rows nearer than every other row: a disc, ringed by the next-nearest rows
    for centre in hole.tolist():
        distance = ((s - s[centre]) ** 2).sum(-1)
        rest = sorted(set(rows.tolist()) - set(hole.tolist()) - set(context.tolist()))
        if (distance[hole].max() <= distance[context].min()
                and distance[context].max() <= distance[rest].min()):
            break
    else:
        raise AssertionError("no row of the hole is its centre")


@pytest.mark.parametrize("kind", ["random", "block", "gap"])
def test_grouped_tasks_never_mix_fields(kind, monkeypatch):
    generator = torch.Generator().manual_seed(4)
    n = 600
    groups = torch.arange(n) % 3  # three fields, interleaved rows
    s = torch.rand(n, 2, generator=generator) + 100.0 * groups[:, None]  # far apart
    columns = {"s": s, "f": groups[:, None].float() * 10 + torch.rand(n, 1)}
    task = TableTask.from_columns(columns, kind, 0.2, generator, n_ctx=32, n_test=16,
                                  batch_size=6, groups=groups)
    drawn = []  # gap tasks are framed (positions lost): record the rows they draw
    real_gap = TableTask.gap
    monkeypatch.setattr(TableTask, "gap", lambda self, *a: drawn.append(real_gap(self, *a))
                        or drawn[-1])
    batch = task.sample(torch.Generator().manual_seed(5))
    if kind == "gap":
        assert len(drawn) == 6
        for hole, context, test in drawn:
            assert len(groups[torch.cat([hole, context, test])].unique()) == 1
        return
    for b in range(6):
        field_of = (torch.cat([batch.s_ctx[b][batch.mask_ctx[b]], batch.s_test[b]])
                    [:, 0] // 100).unique()
        assert len(field_of) == 1, field_of


def test_rows_by_field_equals_selecting_each_field():
    from bsatnp.data.table_task import rows_by_field

    generator = torch.Generator().manual_seed(3)
    rows = torch.randperm(500, generator=generator)[:300]
    codes = torch.randint(0, 40, (300,), generator=generator) * 7
    expected = [rows[codes == code] for code in torch.unique(codes)]
    got = rows_by_field(rows, codes)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_finetune_with_group_draws_each_task_from_one_field(tmp_path):
    rng = np.random.default_rng(8)
    frames = []
    for day in range(3):
        frames.append(pd.DataFrame({"x": rng.uniform(0, 1, 80), "y": rng.uniform(0, 1, 80),
                                    "day": f"2024-01-0{day + 1}",
                                    "v": rng.normal(10 * day, 1, 80)}))
    data = pd.concat(frames, ignore_index=True)
    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                   head_hidden=(8,))
    tuned = Predictor(model).finetune(data, values="v", space=("x", "y"), group="day", steps=2,
                                      n_ctx=16, n_test=8, batch_size=2, out_dir=tmp_path / "r",
                                      progress=False)
    assert tuned.card["finetuned"]["group"] == "day"
    with pytest.raises(ValueError, match=r"no column\(s\) \['when'\]"):
        Predictor(model).finetune(data, values="v", space=("x", "y"), group="when", steps=2,
                                  out_dir=tmp_path / "r2", progress=False)


@pytest.fixture(scope="module")
def space_time():
    """A space-time model with a covariate, a fitted normaliser, and hourly stations."""
    rng = np.random.default_rng(5)
    n = 240
    obs = pd.DataFrame({"x": rng.uniform(0, 10, n), "y": rng.uniform(0, 10, n),
                        "when": pd.Timestamp("2024-03-01") + pd.to_timedelta(
                            rng.integers(0, 8, n), unit="h"),
                        "elev": rng.uniform(0, 500, n)})
    obs["v"] = 10 + np.sin(obs["x"]) + obs["elev"] / 100 + rng.normal(0, 0.1, n)
    targets = pd.DataFrame({"x": rng.uniform(0, 10, 90), "y": rng.uniform(0, 10, 90),
                            "when": pd.Timestamp("2024-03-01") + pd.to_timedelta(
                                rng.integers(1, 7, 90), unit="h"),
                            "elev": rng.uniform(0, 500, 90)})
    torch.manual_seed(0)
    predictor = Predictor(BSATNP(dim_t=1, dim_x=1, num_blocks=1, dim=16, qkv_dim=16,
                                 ffn_dim=32, embed_hidden=(32,), head_hidden=(32,)))
    roles = {"values": "v", "space": ("x", "y"), "time": "when", "covariates": "elev"}
    predictor.fit_normalizer(obs, **roles)
    return predictor, obs, targets


def test_a_time_window_equals_conditioning_on_the_observations_within_it(space_time):
    predictor, obs, targets = space_time
    local = predictor.predict(obs, targets, neighbours=10_000, time_window="1h",
                              chunk_size=7, interval=0.9)
    assert local.index.equals(targets.index)
    for when, rows in targets.groupby("when"):
        near = obs[(obs["when"] - when).abs() <= pd.Timedelta("1h")]
        alone = predictor.predict(near, rows, neighbours=None, interval=0.9)
        for column in ("mean", "std", "lower", "upper"):  # covariates and times carried along
            np.testing.assert_allclose(local.loc[rows.index, column], alone[column],
                                       rtol=1e-5, atol=1e-5)
    everything = predictor.predict(obs, targets, neighbours=None)  # a window over all
    wide = predictor.predict(obs, targets, neighbours=10_000, time_window="12h", chunk_size=11)
    np.testing.assert_allclose(wide["mean"], everything["mean"], rtol=1e-5, atol=1e-5)


def test_a_time_window_is_refused_where_it_cannot_hold(space_time, predictor, data):
    spatial, (obs2d, _) = predictor, data
    with pytest.raises(ValueError, match="time_window needs a model that reads time"):
        spatial.condition(obs2d, values="v", space=("x", "y"), time_window=1.0)
    model, obs, targets = space_time
    with pytest.raises(ValueError, match="time_window must be >= 0"):
        model.condition(obs, time_window=-2)
    with pytest.raises(ValueError, match="time_window 'soon'"):
        model.condition(obs, time_window="soon")
    late = targets.assign(when=pd.Timestamp("2024-03-02 12:00"))
    with pytest.raises(ValueError, match="90 target.* at time 2024-03-02T12:00:00 have no "
                                         "observation within the time window"):
        model.predict(obs, late, time_window="2h")
