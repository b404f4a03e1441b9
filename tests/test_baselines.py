"""Baselines: the paper's TNP-D (roles in the token) and training-free IDW / kNN means."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same, dropped, random_batch, shifted, with_nan_padding

from bsatnp.baselines import IDW, TNPD, KNearestMean, Persistence, TNPDConfig
from bsatnp.batch import Batch
from bsatnp.metrics import coverage
from bsatnp.tasks import eval_batches
from bsatnp.tasks.gp2d import GP2DTask

SMALL = {"dim": 32, "num_blocks": 2, "qkv_dim": 32, "ffn_dim": 64,
         "embed_hidden": (64,), "head_hidden": (64,), "backend": "dense"}


# ------------------------------------------------------------------------------ TNP-D
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_tnpd_shapes_and_parameter_count(norm):
    model = TNPD(norm=norm)
    assert sum(p.numel() for p in model.parameters()) == 474_754  # PROTOCOLS §9
    dist = model(random_batch(B=3, Lc=10, Lt=7))
    assert dist.mean.shape == dist.stddev.shape == (3, 7, 1)
    assert bool((dist.stddev > 0).all())
    two = TNPD(dim_f=2, **SMALL)(random_batch(Lt=5, dim_f=2))
    assert two.mean.shape == (2, 5, 2)


def test_tnpd_config_round_trip_and_unknown_keys():
    config = TNPDConfig(**SMALL)
    assert TNPDConfig.from_dict(config.to_dict()) == config
    assert TNPD(config).config == TNPD(**SMALL).config == config
    with pytest.raises(ValueError, match="TNPDConfig: unknown key"):
        TNPDConfig.from_dict({"use_s": "bias"})
    with pytest.raises(ValueError, match="norm"):
        TNPDConfig(norm="middle")


def test_tnpd_reads_every_role_in_its_token():
    torch.manual_seed(0)
    model = TNPD(dim_x=3, dim_t=1, **SMALL).eval()
    batch = random_batch(B=2, Lc=12, Lt=5, seed=3)
    g = torch.Generator().manual_seed(0)
    extra = {f"{r}_{w}": torch.randn(2, n, d, generator=g)
             for r, d in (("x", 3), ("t", 1)) for w, n in (("ctx", 12), ("test", 5))}
    full = batch.map(**extra)
    with torch.no_grad():
        base = model(full).mean
        moved = model(full.map(x_test=full.x_test + 1.0)).mean
    assert base.shape == (2, 5, 1) and (base - moved).abs().max() > 1e-4  # x is read
    with pytest.raises(ValueError, match="x_ctx is required"):
        model(batch)


@pytest.mark.parametrize("backend", ["dense", "tiled"])
def test_tnpd_masked_context_equals_dropped_context(backend):
    torch.manual_seed(0)
    model = TNPD(**{**SMALL, "backend": backend}).eval()
    batch = random_batch(B=1, Lc=20, seed=4)
    with torch.no_grad():
        base = model(batch)
        assert_same(base, model(dropped(batch)))
        assert_same(base, model(with_nan_padding(batch)), atol=0)


@pytest.mark.parametrize("backend", ["dense", "tiled"])
def test_tnpd_all_masked_keys_predicts_like_context_keys(backend):
    torch.manual_seed(0)
    context = TNPD(**{**SMALL, "backend": backend}).eval()
    everything = TNPD(**{**SMALL, "backend": backend, "keys": "all_masked"}).eval()
    everything.load_state_dict(context.state_dict())
    batch = random_batch(B=3, Lc=20, Lt=9, seed=5)
    with torch.no_grad():
        assert_same(context(batch), everything(batch))
    with pytest.raises(ValueError, match="keys"):
        TNPDConfig(keys="test")


def test_tnpd_is_not_translation_invariant():
    torch.manual_seed(0)
    model = TNPD(**SMALL).eval()
    batch = random_batch(seed=1)
    with torch.no_grad():
        assert (model(batch).mean - model(shifted(batch, 10.0)).mean).abs().max() > 1e-3


# ------------------------------------------------------------------ IDW and kNN means
BASELINES = [IDW(dim_f=2), IDW(power=3.0, dim_f=2), KNearestMean(dim_f=2),
             KNearestMean(k=1, dim_f=2), Persistence(dim_t=0, dim_f=2)]


@pytest.mark.parametrize("model", BASELINES, ids=repr)
def test_local_average_shapes_masking_chunking_translation(model):
    batch = random_batch(B=3, Lc=30, Lt=20, seed=7, dim_f=2)
    base = model(batch)
    assert base.mean.shape == base.stddev.shape == (3, 20, 2)
    assert bool((base.stddev >= model.min_std).all())
    one = random_batch(B=1, Lc=30, Lt=20, seed=8, dim_f=2)
    assert_same(model(one), model(dropped(one)))
    assert_same(base, model(with_nan_padding(batch)), atol=0)
    model.chunk_size = 3
    assert_same(base, model(batch), atol=1e-6)
    model.chunk_size = 256
    assert_same(base, model(shifted(batch, 10.0)), atol=1e-5)


def test_idw_interpolates_context_points_exactly():
    model = IDW(min_std=0.05)
    batch = random_batch(seed=9)
    batch = batch.map(s_test=torch.cat([batch.s_ctx[:, :1], batch.s_test], dim=1), f_test=None)
    dist = model(batch)
    assert torch.equal(dist.mean[:, 0], batch.f_ctx[:, 0])
    assert torch.allclose(dist.stddev[:, 0], torch.tensor(0.05))
    assert bool((dist.stddev[:, 1:] > 0.05).all())


def test_knn_with_k_above_context_size_is_the_context_mean():
    batch = random_batch(seed=10)
    dist = KNearestMean(k=100)(batch)
    mask = batch.mask_ctx[..., None]
    mean = torch.where(mask, batch.f_ctx, 0).sum(1) / mask.sum(1)
    assert torch.allclose(dist.mean, mean[:, None].expand_as(dist.mean), atol=1e-6)


@pytest.mark.parametrize("make", [IDW, lambda: KNearestMean(k=1)], ids=["idw", "1nn"])
def test_calibrate_moves_coverage_towards_nominal(make):
    task = GP2DTask(batch_size=2, n_ctx=64, n_test=64, min_ctx=16, max_ctx=63)
    fit = list(eval_batches(task, 4, seed=0))
    held_out = list(eval_batches(task, 8, seed=1))
    model = make()

    def held_out_coverage() -> float:
        values = [coverage(*model.predict(b), b.f_test, b.test_mask()) for b in held_out]
        return float(torch.stack(values).mean())

    before = held_out_coverage()
    scale = model.calibrate(fit)
    assert scale == pytest.approx(float(model.std_scale)) and scale != 1.0
    after = held_out_coverage()
    assert abs(after - 0.95) < abs(before - 0.95)


def test_local_average_bad_input_raises_value_error():
    batch = random_batch()
    with pytest.raises(ValueError, match="s_ctx"):
        IDW()(batch.map(s_ctx=None, s_test=None))
    with pytest.raises(ValueError, match="f_test"):
        IDW().calibrate([batch.map(f_test=None)])
    with pytest.raises(ValueError, match="batch"):
        KNearestMean()({"f_ctx": batch.f_ctx})
    for bad in (lambda: IDW(power=0.0), lambda: KNearestMean(k=0), lambda: IDW(min_std=0.0),
                lambda: IDW(chunk_size=0)):
        with pytest.raises(ValueError):
            bad()


def test_persistence_takes_the_latest_value_at_the_nearest_location():
    # Two stations observed at three hours; test points at both stations and in between.
    s = torch.tensor([[0.0, 0.0], [5.0, 0.0]]).repeat(3, 1)  # station 0, 1, 0, 1, 0, 1
    t = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])[:, None]
    f = torch.tensor([10.0, 20.0, 11.0, 21.0, 12.0, 22.0])[:, None]
    order = torch.tensor([4, 1, 0, 5, 2, 3])  # any order of the context
    batch = Batch(s_ctx=s[order][None], t_ctx=t[order][None], f_ctx=f[order][None],
                  s_test=torch.tensor([[[0.0, 0.0], [5.0, 0.0], [4.0, 0.0]]]),
                  t_test=torch.full((1, 3, 1), 3.0))
    dist = Persistence(min_std=0.5)(batch)
    assert dist.mean[0, :, 0].tolist() == [12.0, 22.0, 22.0]
    assert torch.allclose(dist.stddev, torch.tensor(0.5))


def test_a_local_average_serves_the_own_data_road_in_the_data_units(tmp_path):
    """Predictor(IDW()) predicts in the data's units what inverse-distance weighting of the
    raw values gives (numpy, float64), and saves and loads as any predictor; the categorical
    kNN gives the class shares of the nearest stations."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    from bsatnp.predictor import Predictor

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"x": rng.uniform(0, 50_000, 40), "y": rng.uniform(0, 30_000, 40),
                        "v": rng.normal(300.0, 20.0, 40)})
    targets = pd.DataFrame({"x": rng.uniform(0, 50_000, 7), "y": rng.uniform(0, 30_000, 7)})
    roles = dict(values="v", space=("x", "y"))
    out = Predictor(IDW(power=2.0)).predict(obs, targets, neighbours=None, **roles)
    d2 = ((targets.to_numpy()[:, None] - obs[["x", "y"]].to_numpy()[None]) ** 2).sum(-1)
    w = 1 / d2
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(out["mean"], w @ obs["v"].to_numpy(), rtol=1e-5)
    saved = Predictor(IDW(power=2.0)).save(tmp_path / "idw.safetensors")
    again = Predictor.load(saved).predict(obs, targets, neighbours=None, **roles)
    np.testing.assert_allclose(again["mean"], out["mean"], rtol=1e-6)

    labels = pd.DataFrame({"x": [0.0, 1.0, 10.0, 11.0, 12.0], "y": [0.0] * 5,
                           "c": ["a", "a", "b", "b", "a"]})
    knn = Predictor(KNearestMean(k=2, dim_f=2, likelihood="categorical", smoothing=1e-3))
    probs = knn.predict(labels, pd.DataFrame({"x": [0.5, 10.5], "y": [0.0, 0.0]}),
                        values="c", space=("x", "y"), neighbours=None)
    assert probs["predicted_class"].tolist() == ["a", "b"]
