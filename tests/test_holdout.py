"""Choosing the neighbourhood size on held-out rows of the user's data (bsatnp.holdout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("scipy")

from scipy.stats import norm  # noqa: E402

from bsatnp.holdout import choose_neighbours, holdout_rows  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402

SMALL = dict(num_blocks=2, dim=32, qkv_dim=32, ffn_dim=64, embed_hidden=(64,),
             head_hidden=(64,))
ROLES = dict(values="v", space=("x", "y"))


def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(BSATNP(**SMALL).eval())


def field(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n)})
    frame["v"] = 10 + np.sin(frame["x"] / 15) + 0.5 * np.cos(frame["y"] / 10)
    return frame


def test_random_holdout_is_a_seeded_sample_without_repeats():
    space = np.random.default_rng(0).uniform(size=(1000, 2))
    a = holdout_rows(space, "random", 0.1, np.random.default_rng(3))
    b = holdout_rows(space, "random", 0.1, np.random.default_rng(3))
    assert len(a) == 100 and np.array_equal(a, b) and np.array_equal(a, np.unique(a))


def brute_force_hole(points: np.ndarray, centre: int, size: int) -> set[int]:
    distances = np.linalg.norm(points - points[centre], axis=1)
    return set(np.argsort(distances, kind="stable")[:size].tolist())


def test_a_gap_is_the_rows_nearest_its_centre():
    space = np.random.default_rng(1).uniform(size=(400, 2))
    held = holdout_rows(space, "gap", 0.05, np.random.default_rng(0), hole_size=20)
    assert len(held) == 20
    # one of the held rows is the centre, and the hole is exactly its 20 nearest rows
    assert any(brute_force_hole(space, c, 20) == set(held.tolist()) for c in held)


def test_a_gap_in_degrees_crosses_the_antimeridian():
    lon = np.concatenate([np.linspace(178.0, 179.9, 20), np.linspace(-179.9, -178.0, 20),
                          np.linspace(0.0, 10.0, 40)])
    space = np.stack([lon, np.zeros_like(lon)], 1)

    def straddles(lonlat: bool) -> int:  # holes holding rows from both sides of ±180
        holes = [space[holdout_rows(space, "gap", 0.1, np.random.default_rng(seed),
                                    hole_size=8, lonlat=lonlat), 0] for seed in range(40)]
        return sum(bool((h > 170).any() and (h < -170).any()) for h in holes)

    assert straddles(lonlat=True) > 0 and straddles(lonlat=False) == 0


def test_holes_add_up_to_the_fraction():
    space = np.random.default_rng(2).uniform(size=(2000, 2))
    held = holdout_rows(space, "gap", 0.1, np.random.default_rng(0), hole_size=50)
    assert 150 <= len(held) <= 200  # 4 holes of 50, some overlapping
    one = holdout_rows(space, "gap", 0.01, np.random.default_rng(0), hole_size=500)
    assert len(one) == 500  # at least one hole, of the size asked


@pytest.mark.parametrize("bad", [dict(fraction=0.0), dict(fraction=0.6), dict(hole_size=0),
                                 dict(hole_size=26), dict(geometry="ring")])
def test_holdout_refuses_bad_settings(bad):
    settings = dict(geometry="gap", fraction=0.1, hole_size=4) | bad
    with pytest.raises(ValueError):
        holdout_rows(np.zeros((50, 2)), settings["geometry"], settings["fraction"],
                     np.random.default_rng(0), hole_size=settings["hole_size"])


def test_each_score_is_the_crps_of_the_held_out_rows_predicted_from_the_rest():
    data, model = field(), predictor()
    choice = choose_neighbours(model, data, candidates=(16, 64, 1000), geometry="gap",
                               fraction=0.1, hole_size=10, seed=5, **ROLES)
    held = holdout_rows(data[["x", "y"]].to_numpy(), "gap", 0.1, np.random.default_rng(5),
                        hole_size=10)
    assert choice.held_out == len(held) and choice.geometry == "gap"
    kept = np.setdiff1d(np.arange(len(data)), held)
    for k in (16, 64, 1000):  # by hand: predict, then the closed-form Gaussian CRPS
        out = model.predict(data.iloc[kept], data.iloc[held][["x", "y"]], neighbours=k,
                            progress=False, **ROLES)
        z = (data["v"].to_numpy()[held] - out["mean"].to_numpy()) / out["std"].to_numpy()
        crps = out["std"].to_numpy() * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z)
                                        - 1 / np.sqrt(np.pi))
        assert choice.crps[k] == pytest.approx(crps.mean(), rel=1e-6)
    assert choice.neighbours == min(choice.crps, key=choice.crps.get)
    assert choice.crps[16] != choice.crps[64]  # the neighbourhood size mattered


def test_candidates_beyond_the_rows_score_once_as_conditioning_on_all():
    data = field(n=60)
    choice = choose_neighbours(predictor(), data, candidates=(500, 2000, 54), fraction=0.1,
                               **ROLES)
    assert choice.held_out == 6
    assert choice.crps[54] == choice.crps[500] == choice.crps[2000]
    assert choice.neighbours == 54  # ties go to the smallest


def test_rows_with_missing_values_are_left_out_before_holding_out():
    data = field(n=100)
    data.loc[[3, 50], "v"] = np.nan
    choice = choose_neighbours(predictor(), data, candidates=(32,), fraction=0.1, **ROLES)
    assert choice.held_out == 10 and np.isfinite(choice.crps[32])  # 98 rows kept


@pytest.mark.parametrize("bad, message", [
    (dict(candidates=()), "candidates is empty"),
    (dict(candidates=(0, 64)), "integers >= 1"),
    (dict(candidates=(64,), neighbours=8), "set by choose_neighbours"),
    (dict(candidates=(64,), values="nope"), "nope"),
    (dict(candidates=(64,), folds=0), "folds"),
])
def test_choose_neighbours_refuses_bad_input(bad, message):
    options = ROLES | bad
    with pytest.raises(ValueError, match=message):
        choose_neighbours(predictor(), field(n=50), **options)


def test_folds_average_the_crps_of_every_held_out_row():
    data, model = field(n=200), predictor()
    one = choose_neighbours(model, data, candidates=(16, 48), fraction=0.1, seed=7, **ROLES)
    both = choose_neighbours(model, data, candidates=(16, 48), fraction=0.1, folds=2, seed=7,
                             **ROLES)
    assert both.held_out == 40 and one.held_out == 20
    # the first fold is the single holdout of the same seed; the second another draw
    generator = np.random.default_rng(7)
    first = holdout_rows(data[["x", "y"]].to_numpy(), "random", 0.1, generator)
    second = holdout_rows(data[["x", "y"]].to_numpy(), "random", 0.1, generator)
    assert not np.array_equal(first, second)
    kept = np.setdiff1d(np.arange(200), second)
    out = model.predict(data.iloc[kept], data.iloc[second][["x", "y"]], neighbours=16,
                        progress=False, **ROLES)
    z = (data["v"].to_numpy()[second] - out["mean"].to_numpy()) / out["std"].to_numpy()
    crps2 = (out["std"].to_numpy() * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z)
                                      - 1 / np.sqrt(np.pi))).mean()
    assert both.crps[16] == pytest.approx((one.crps[16] + crps2) / 2, rel=1e-6)
