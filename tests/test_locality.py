"""Far tiles: reaches of every bias family, box bounds, Z-order, and skipping that changes
nothing (values and gradients against float64, masks, several tasks, translation)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attention_backends import check_backend, run_backend

import bsatnp.attention.locality as locality
from bsatnp.attention import AttentionBias, BiasSpec
from bsatnp.attention.biases import DistanceBias
from bsatnp.geometry import BOX_DISTANCES, DISTANCES


def spread_problem(B=1, Lq=300, Lk=280, side=60.0, seed=0, family="tisa", mask=False,
                   time=False):
    """Points on a ``side``² square under a bias of reach 2–5: most tile pairs are far.

    With ``time``, an exponential bias on ``|Δt|`` too (t in [0, 10], reach ~0.4): a tile
    pair is far only where it is far in both roles.
    """
    g = torch.Generator().manual_seed(seed)
    specs = [BiasSpec(role="s", family=family, num_basis=3)]
    if time:
        specs.append(BiasSpec(role="t", family="exponential", distance="abs", num_basis=2))
    bias = AttentionBias(tuple(specs), 2)
    with torch.no_grad():
        for name, p in bias.named_parameters():
            if name.endswith("b"):
                p.copy_(torch.empty(p.shape).uniform_(20.0, 40.0, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g))
        if time:
            bias.terms[1].b.mul_(10.0)
    coords_q = {"s": side * torch.rand(B, Lq, 2, generator=g)}
    coords_k = {"s": side * torch.rand(B, Lk, 2, generator=g)}
    if time:
        coords_q["t"] = 10 * torch.rand(B, Lq, 1, generator=g)
        coords_k["t"] = 10 * torch.rand(B, Lk, 1, generator=g)
    q, k, v = (torch.randn(B, 2, L, 4, generator=g) for L in (Lq, Lk, Lk))
    key_mask = torch.rand(B, Lk, generator=g) < 0.7 if mask else torch.ones(B, Lk, dtype=bool)
    return q, k, v, bias, coords_q, coords_k, key_mask


@pytest.fixture
def far_calls(monkeypatch):
    """Every answer of :meth:`FarTiles.far` during the test."""
    calls: list[bool] = []
    original = locality.FarTiles.far

    def far(self, i, j):
        calls.append(original(self, i, j))
        return calls[-1]

    monkeypatch.setattr(locality.FarTiles, "far", far)
    return calls


@pytest.mark.parametrize("family", ["rbf", "tisa", "exponential"])
@pytest.mark.parametrize("B,mask", [(1, False), (1, True), (3, True), (2, False)])
def test_skipping_far_tiles_matches_float64(family, B, mask, far_calls):
    """Values and gradients (q, k, v and every bias parameter), with most tiles skipped."""
    problem = spread_problem(B=B, family=family, mask=mask, seed=B)
    check_backend("tiled", problem, tile_q=16, tile_k=16)
    assert sum(far_calls) > len(far_calls) / 2, "most tile pairs should be far"


def test_skipping_far_tiles_in_space_and_time_matches_float64(far_calls):
    problem = spread_problem(B=2, mask=True, time=True, Lq=400, Lk=500)
    check_backend("tiled", problem, tile_q=16, tile_k=16)
    assert any(far_calls) and not all(far_calls)


def test_skipping_changes_nothing_but_round_off(far_calls, monkeypatch):
    problem = spread_problem(Lq=500, Lk=600, time=True)
    with torch.no_grad():
        skipped = run_backend("tiled", *problem, tile_q=16, tile_k=16)[0]
        assert any(far_calls)
        monkeypatch.setenv("BSATNP_FAR_TILES", "0")
        n_calls = len(far_calls)
        every = run_backend("tiled", *problem, tile_q=16, tile_k=16)[0]
        assert len(far_calls) == n_calls  # switched off: never asked
    torch.testing.assert_close(skipped, every, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shift", [10.0, 1e4])
def test_far_tiles_far_from_the_origin_match_float64(shift, far_calls):
    """Boxes and reaches measured on coordinates 10 and 1e4 away from the origin."""
    q, k, v, bias, coords_q, coords_k, mask = spread_problem(Lq=200, Lk=300, time=True)
    coords_q = {r: c + shift for r, c in coords_q.items()}
    coords_k = {r: c + shift for r, c in coords_k.items()}
    check_backend("tiled", (q, k, v, bias, coords_q, coords_k, mask), tile_q=16, tile_k=16)
    assert any(far_calls)


@pytest.mark.parametrize("family", ["rbf", "exponential", "tisa"])
def test_reach_is_where_every_term_is_exactly_zero(family):
    """Beyond the reach every head's bias is 0.0; a little inside it is not."""
    torch.manual_seed(0)
    term = DistanceBias(BiasSpec(family=family, num_basis=4), num_heads=3)
    with torch.no_grad():
        term.a.copy_(torch.randn(3, 4))
        term.b.copy_(torch.empty(3, 4).uniform_(0.2, 5.0))
        if family == "tisa":
            term.c.copy_(torch.empty(3, 4).uniform_(-1.0, 1.0))
    reach = term.reach()
    assert reach is not None and reach > 0
    radii = torch.tensor([0.9 * reach, reach * (1 + 1e-6), 2 * reach, 1e3 * reach])
    keys = torch.stack([radii, torch.zeros(4)], dim=-1)[None]  # [1, 4, 2]
    with torch.no_grad():
        bias = term(torch.zeros(1, 1, 2), keys)[0, :, 0]  # [H, 4]
    assert bool((bias[:, 1:] == 0).all())
    assert bool((bias[:, 0] != 0).any())


def test_no_reach_where_the_bias_never_vanishes():
    rbf = DistanceBias(BiasSpec(family="rbf"), num_heads=2)
    with torch.no_grad():
        rbf.b[1, 2] = -0.1  # grows with distance
    assert rbf.reach() is None
    with torch.no_grad():
        rbf.a[1, 2] = 0.0  # ... but has no weight
    assert rbf.reach() is not None
    with torch.no_grad():
        rbf.a.zero_()
    assert rbf.reach() == 0.0
    assert DistanceBias(BiasSpec(family="scalar"), num_heads=2).reach() is None
    sphere = AttentionBias((BiasSpec(family="rbf", distance="great_circle"),), 2)
    assert sphere.terms[0].reach() is not None and sphere.reaches() is None  # no box bound


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), distance=st.sampled_from(sorted(BOX_DISTANCES)),
       dim=st.integers(1, 3))
def test_box_distance_bounds_every_pair(seed, distance, dim):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, 7, dim, generator=g) * 3
    b = torch.randn(1, 9, dim, generator=g) * 3 + torch.randn(dim, generator=g) * 5
    gaps = torch.maximum(b.amin(1) - a.amax(1), a.amin(1) - b.amax(1)).clamp_min(0)
    bound = BOX_DISTANCES[distance](gaps.double())
    fn, squared = DISTANCES[distance]
    d = fn([a[:, :, None, i] for i in range(dim)], [b[:, None, :, i] for i in range(dim)])
    d = d.sqrt() if squared else d
    assert bool((d.double() >= bound * (1 - 1e-6)).all())


def test_morton_order_visits_a_grid_in_z_order():
    """On a 16 × 16 grid every 4 consecutive points form a 2 × 2 cell, every 16 a 4 × 4."""
    xy = torch.cartesian_prod(torch.arange(16.0), torch.arange(16.0))
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    points = torch.stack([xy[perm], xy[perm] + 100.0])  # two tasks, far apart
    order = locality.morton_order(points)
    for task in range(2):
        assert sorted(order[task].tolist()) == list(range(256))
        ordered = points[task][order[task]]
        for size, side in ((4, 1.0), (16, 3.0)):
            boxes = ordered.view(-1, size, 2)
            assert bool((boxes.amax(1) - boxes.amin(1) == side).all())


def test_gather_rows_takes_rows_per_task():
    x = torch.arange(2 * 3 * 4).view(2, 3, 4)
    order = torch.tensor([[2, 0, 1], [1, 2, 0]])
    out = locality.gather_rows(x, order, 1)
    assert torch.equal(out[0], x[0, [2, 0, 1]]) and torch.equal(out[1], x[1, [1, 2, 0]])
