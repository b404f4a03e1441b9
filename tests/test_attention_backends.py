"""Every attention backend against an independent float64 dense reference."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import attention_reference, bias_reference, pairwise

import bsatnp.attention.compiled as compiled
import bsatnp.attention.fused_cpu as fused_cpu
import bsatnp.attention.tiled as tiled
from bsatnp.attention import AttentionBias, BiasSpec, biased_attention
from bsatnp.attention.exp_basis import head_rates
from bsatnp.attention.flex import flex_attention_biased, flex_available
from bsatnp.attention.functional import (
    CUDA_DENSE_TRAIN_MAX_ELEMENTS,
    backend_for,
    choose_backend,
)
from bsatnp.attention.runtime import (
    AttentionRuntime,
    attention_runtime,
    current_runtime,
    default_runtime,
)

GRAD_BACKENDS = ("dense", "tiled")
SPECS = {
    "rbf": BiasSpec(role="s", family="rbf", init="spread"),
    "exponential": BiasSpec(role="s", family="exponential", num_basis=3, init="spread"),
    "tisa": BiasSpec(role="s", family="tisa", num_basis=4, init="spread"),
    "scalar": BiasSpec(role="s", family="scalar"),
    "great_circle": BiasSpec(role="s", family="rbf", distance="great_circle", num_basis=2),
    "abs_time": BiasSpec(role="t", family="exponential", distance="abs", num_basis=3),
}


def make_problem(B, H, Lq, Lk, D, spec_names, seed, mask_kind="random"):
    g = torch.Generator().manual_seed(seed)
    specs = tuple(SPECS[n] for n in spec_names)
    bias = AttentionBias(specs, H)
    with torch.no_grad():  # random parameters so every basis function differs
        for name, p in bias.named_parameters():
            # Rates stay positive (a bias that decays with distance, the regime the model
            # lives in); a negative rate makes exp(−b·d²) explode and float32 gradients of b
            # lose digits in every backend.
            noise = torch.randn(p.shape, generator=g)
            p.copy_(p * torch.exp(0.3 * noise) if name.endswith("b") else p + 0.3 * noise)
    coords_q, coords_k = {}, {}
    for spec in specs:
        dim = 2 if spec.role == "s" else 1
        # Coordinates of unit spread: the b-gradient sums terms a·e^{−b·d²}·d², and float32
        # round-off of those terms grows with d² (dense SDPA reaches 8e-5 at spread 1.5).
        scale = 60.0 if spec.distance == "great_circle" else 1.0
        coords_q[spec.role] = scale * torch.randn(B, Lq, dim, generator=g)
        coords_k[spec.role] = scale * torch.randn(B, Lk, dim, generator=g)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for L in (Lq, Lk, Lk))
    if mask_kind == "random":
        key_mask = torch.rand(B, Lk, generator=g) < 0.7
        key_mask[:, :2] = True  # one valid key is the degenerate case of test_single_key
    elif mask_kind == "none_valid_in_first":
        key_mask = torch.rand(B, Lk, generator=g) < 0.7
        key_mask[0] = False
    else:
        key_mask = torch.ones(B, Lk, dtype=torch.bool)
    return q, k, v, bias, coords_q, coords_k, key_mask


def reference(q, k, v, bias, coords_q, coords_k, key_mask):
    """float64 reference output and gradients (of a fixed random projection)."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    params = []
    total = 0
    for term in bias.terms:
        a, b, c = (
            None if p is None else p.detach().double().requires_grad_() for p in term.params()
        )
        params += [p for p in (a, b, c) if p is not None]
        role = term.spec.role
        d = pairwise(term.spec.distance, coords_q[role].double(), coords_k[role].double())
        total = total + bias_reference(term.spec.family, d, a, b, c)
    out = attention_reference(q, k, v, total, key_mask)
    return out, (q, k, v, *params)


def run_backend(backend, q, k, v, bias, coords_q, coords_k, key_mask, tile_q=None, tile_k=None):
    q, k, v = (x.detach().clone().requires_grad_(backend != "flex") for x in (q, k, v))
    out = biased_attention(
        q, k, v, bias, coords_q, coords_k, key_mask, backend=backend, tile_q=tile_q, tile_k=tile_k
    )
    return out, (q, k, v, *bias.parameters())


def assert_close_rel(ours, ref, tol, what):
    """Max abs error relative to the reference's max magnitude, floored at 1.

    The inputs are O(1), so intermediate terms (dP = dO·vᵀ, bias·d², ...) are O(1) and carry
    float32 round-off of ~1e-7 each. Where softmax saturates, an exact gradient can be far
    smaller than those terms; the floor keeps the check meaningful there (PyTorch's own
    float32 SDPA backward errs by up to 1e-3 relative to such tiny gradients).
    """
    err = (ours.double() - ref).abs().max().item()
    scale = max(ref.abs().max().item(), 1.0)
    assert err / scale <= tol, f"{what}: relative error {err / scale:.2e} > {tol}"


def check_backend(backend, problem, tile_q=None, tile_k=None):
    ref_out, ref_inputs = reference(*problem)
    out, inputs = run_backend(backend, *problem, tile_q=tile_q, tile_k=tile_k)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert_close_rel(out, ref_out, 1e-5, f"{backend} output")
    if backend == "flex":
        return
    weight = torch.randn(
        ref_out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), ref_inputs)
    grads = torch.autograd.grad((out * weight.float()).sum(), inputs)
    names = ["q", "k", "v"] + [n for n, _ in problem[3].named_parameters()]
    for name, g, rg in zip(names, grads, ref_grads):
        assert_close_rel(g, rg, 1e-4, f"{backend} grad {name}")


ALL_BACKENDS = ("dense", "tiled", "flex")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "spec_names",
    [("rbf",), ("exponential",), ("tisa",), ("scalar",), ("great_circle",), ("rbf", "abs_time")],
)
def test_backend_matches_reference_per_bias_family(backend, spec_names):
    problem = make_problem(2, 4, 23, 17, 8, spec_names, seed=3)
    check_backend(backend, problem, tile_q=5, tile_k=6)


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_compiled_tisa_profile_matches_reference(backend, monkeypatch):
    """The inductor-compiled ``tisa`` profile (forced for every tile size), through each
    backend, against the float64 reference: values and gradients of q, k, v, a, b, c."""
    monkeypatch.setenv("BSATNP_COMPILE", "1")
    assert compiled.tisa.wants(1)
    problem = make_problem(2, 4, 23, 17, 8, ("tisa", "abs_time"), seed=13)
    check_backend(backend, problem, tile_q=5, tile_k=6)
    assert compiled.tisa.compiled is not None and not compiled.tisa.failed


@pytest.mark.skipif(not flex_available(), reason="this PyTorch build has no flex_attention")
def test_compiled_flex_inference_on_cpu_matches_reference():
    """Compiled flex on the CPU (inference only; ``benchmarks/flex_cpu.py`` times it) against
    float64: two biased roles, random key masks, a task without any valid key."""
    q, k, v, bias, cq, ck, mask = make_problem(2, 4, 23, 17, 8, ("rbf", "abs_time"), seed=5,
                                               mask_kind="none_valid_in_first")
    ref_out, _ = reference(q, k, v, bias, cq, ck, mask)
    with torch.no_grad():
        out = flex_attention_biased(q, k, v, bias, cq, ck, mask, 8**-0.5, compile=True)
    assert out[0].abs().max() == 0 and out[1].abs().max() > 0
    assert_close_rel(out, ref_out, 1e-5, "compiled CPU flex output")


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("family", ["rbf", "exponential"])
@pytest.mark.parametrize("rates", ["all distinct", "one per head"])
def test_compiled_exp_family_inference_matches_reference(backend, family, rates, monkeypatch):
    """The compiled ``rbf``/``exponential`` profile (inference; forced for every tile size)
    through each backend against float64, with every rate distinct and with one rate per
    head (a model trained from the constant init)."""
    monkeypatch.setenv("BSATNP_COMPILE", "1")
    q, k, v, bias, cq, ck, mask = make_problem(2, 3, 23, 17, 8, (family,), seed=17)
    term = bias.terms[0]
    if rates == "one per head":
        with torch.no_grad():
            term.b.copy_(term.b[:, :1].expand_as(term.b))
    grouped = head_rates(term.a.detach(), term.b.detach())
    assert grouped is not None
    assert grouped[0].shape[1] == (1 if rates == "one per head" else term.b.shape[1])
    ref_out, _ = reference(q, k, v, bias, cq, ck, mask)
    with torch.no_grad():
        out = biased_attention(q, k, v, bias, cq, ck, mask, backend=backend, tile_q=5, tile_k=6)
    assert compiled.exp_family.compiled is not None and not compiled.exp_family.failed
    assert_close_rel(out, ref_out, 1e-5, f"{backend} compiled {family} output")


def test_compiled_profile_warms_up_eagerly_then_compiles(monkeypatch):
    """Automatic mode: small tiles never compile; large ones stay eager until the warm-up
    has seen its count of scores; ``BSATNP_COMPILE`` 0/1 override."""
    monkeypatch.setenv("BSATNP_COMPILE", "auto")
    profile = compiled._Compiled(compiled.exp_family_profile, warmup=3 * compiled.MIN_ELEMENTS)
    assert not profile.wants(compiled.MIN_ELEMENTS - 1)
    assert [profile.wants(compiled.MIN_ELEMENTS) for _ in range(4)] == [False] * 3 + [True]
    assert compiled.exp_family.warmup == compiled.EXP_FAMILY_WARMUP > 0
    assert compiled.tisa.warmup == compiled.TISA_WARMUP > 0
    monkeypatch.setenv("BSATNP_COMPILE", "0")
    assert not profile.wants(compiled.MIN_ELEMENTS)
    monkeypatch.setenv("BSATNP_COMPILE", "1")
    assert compiled._Compiled(compiled.exp_family_profile, warmup=10**12).wants(1)


def test_the_attention_runtime_block_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("BSATNP_COMPILE", "1")
    monkeypatch.setenv("BSATNP_FAR_TILES", "0")
    assert default_runtime() == AttentionRuntime(compile="always", far_tiles=False)
    profile = compiled._Compiled(compiled.exp_family_profile)
    with attention_runtime(compile="never") as outer:
        assert outer == AttentionRuntime(compile="never", far_tiles=False)
        assert not profile.wants(compiled.MIN_ELEMENTS)
        with attention_runtime(far_tiles=True) as inner:  # changes apply to the outer one
            assert inner == AttentionRuntime(compile="never", far_tiles=True)
            assert current_runtime() is inner
        assert current_runtime() is outer  # leaving a block restores the outer one
    assert profile.wants(compiled.MIN_ELEMENTS) and current_runtime() == default_runtime()
    with pytest.raises(ValueError, match="compile"):
        AttentionRuntime(compile="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        with attention_runtime(colour="red"):
            pass


def test_inference_compiles_the_profile_but_not_its_gradients(monkeypatch):
    """A prediction pays one compile; the gradients compile when first wanted."""
    monkeypatch.setenv("BSATNP_COMPILE", "1")
    profile = compiled._Compiled(compiled.tisa_profile, compiled.tisa_profile_grads)
    dist = torch.rand(2, 1, 4, 6)
    params = [torch.rand(1, 3, 1, 1, 2, requires_grad=True) for _ in "abc"]
    with torch.no_grad():
        profile(dist, *params)
    assert profile.compiled is not None and profile.compiled_grads is None
    torch.autograd.grad(profile(dist, *params).sum(), params)
    assert profile.compiled_grads is not None and not profile.failed


def test_head_rates_group_each_heads_rates_exactly():
    a = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 1.0], [0.5, 3.0, 0.5]], dtype=torch.float64)
    grouped = head_rates(a, b)
    assert grouped is not None
    rate, amp = grouped
    assert rate.shape == amp.shape == (2, 2)
    r = torch.linspace(0, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(
        (amp[:, :, None] * torch.exp(-rate[:, :, None] * r)).sum(1),
        (a[:, :, None] * torch.exp(-b[:, :, None] * r)).sum(1), rtol=1e-15, atol=0,
    )
    # Rates shared between heads (here all equal, a fresh model), or heads with unequal
    # numbers of rates: grouping across heads takes fewer exponentials.
    assert head_rates(a, torch.ones_like(b)) is None
    assert head_rates(a, torch.tensor([[1.0, 1.0, 1.0], [0.5, 3.0, 0.5]])) is None


@pytest.mark.parametrize("mode", ["0", "1"])
def test_tisa_profile_never_produces_subnormals(mode, monkeypatch):
    """Far pairs under a sharp profile: exponents from −200 to 0 cross the subnormal band
    (−104, −87), where x86 arithmetic is 10–50× slower. Eager and compiled profiles give
    exact zeros there and match float64 elsewhere."""
    monkeypatch.setenv("BSATNP_COMPILE", mode)
    dist = torch.linspace(0.0, 20.0, 4001).view(1, 1, 1, -1).expand(2, 1, 3, -1)
    a = torch.tensor([0.7, -1.3]).view(1, 2, 1, 1, 1)
    b = torch.tensor([0.5, 2.0]).view(1, 2, 1, 1, 1)
    c = torch.tensor([0.0, 10.0]).view(1, 2, 1, 1, 1)
    exponent = -b * (dist[..., None] - c).square()
    assert bool(((exponent > -104) & (exponent < -87)).any())  # the band is crossed
    params = [p.requires_grad_() for p in (a, b, c)]
    out = compiled.tisa(dist, *params)
    tiny = torch.finfo(torch.float32).tiny
    assert not bool(((out != 0) & (out.abs() < tiny)).any()), "subnormal bias values"
    params64 = [p.detach().double().requires_grad_() for p in params]
    ref = compiled.tisa_profile(dist.double(), *params64)
    assert_close_rel(out, ref, 1e-6, "tisa profile")
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(out, params, weights)
    grads64 = torch.autograd.grad(ref, params64, weights.double())
    for name, g, g64 in zip("abc", grads, grads64):
        assert_close_rel(g, g64, 1e-5, f"tisa gradient of {name}")


@pytest.mark.parametrize("mode", ["0", "1"])
def test_tisa_profile_saves_nothing_per_score_for_its_backward(mode, monkeypatch):
    """The training forward keeps its distances and parameters, not one tensor per score:
    left to autograd, the compiled profile saved its terms and ran 8× slower writing them."""
    monkeypatch.setenv("BSATNP_COMPILE", mode)
    dist = 4 * torch.rand(2, 1, 16, 24)
    params = [torch.rand(1, 3, 1, 1, 5, requires_grad=True) for _ in "abc"]
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = compiled.tisa(dist, *params)
    assert saved and max(saved) == dist.numel() < out.numel()
    torch.autograd.grad(out.sum(), params)


def test_compiled_profiles_stay_eager_under_a_dispatch_mode(monkeypatch):
    """The FLOP counter (a dispatch mode) must not reach the compiled function: dynamo would
    recompile for the mode and later calls outside it lost the fused kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setenv("BSATNP_COMPILE", "1")
    assert compiled.tisa.wants(1)
    with FlopCounterMode(display=False):
        assert not compiled.tisa.wants(1)
    assert compiled.tisa.wants(1)


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    profile = compiled._Compiled(compiled.tisa_profile)
    monkeypatch.setenv("BSATNP_COMPILE", "1")

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    dist = torch.rand(2, 1, 4, 6)
    params = [torch.rand(1, 3, 1, 1, 2) for _ in range(3)]
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        first = profile(dist, *params)
    assert profile.failed and torch.equal(first, compiled.tisa_profile(dist, *params))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile(dist, *params)  # no second warning


@settings(max_examples=20, deadline=None)
@given(
    B=st.integers(1, 3),
    H=st.integers(1, 4),
    Lq=st.integers(1, 40),
    Lk=st.integers(2, 40),  # Lk=1: test_single_key
    D=st.sampled_from([1, 4, 16]),
    tile_q=st.integers(1, 48),
    tile_k=st.integers(1, 48),
    mask_kind=st.sampled_from(["random", "all", "none_valid_in_first"]),
    seed=st.integers(0, 10_000),
    backend=st.sampled_from(ALL_BACKENDS),
)
def test_backends_random_sizes_masks_tiles(
    B, H, Lq, Lk, D, tile_q, tile_k, mask_kind, seed, backend
):
    problem = make_problem(B, H, Lq, Lk, D, ("rbf",), seed, mask_kind)
    check_backend(backend, problem, tile_q=tile_q, tile_k=tile_k)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_single_key(backend):
    problem = make_problem(2, 2, 9, 1, 4, ("rbf",), seed=5, mask_kind="all")
    check_backend(backend, problem, tile_q=4, tile_k=1)
    out, _ = run_backend(backend, *problem)
    v = problem[2]
    assert torch.allclose(out, v.expand_as(out), atol=1e-6)  # one key: output is its value


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("spec_names", [("rbf",), ("tisa", "abs_time")])
def test_tiled_single_key_tile_kept_or_recomputed(keep, spec_names, monkeypatch):
    """One key tile: the training forward keeps its tiles (small) or the backward recomputes
    them (above KEEP_ELEMENTS); both match the reference, with several query tiles."""
    if not keep:
        monkeypatch.setattr(tiled, "KEEP_ELEMENTS", 0)
    problem = make_problem(3, 2, 19, 13, 4, spec_names, seed=21)
    check_backend("tiled", problem, tile_q=5, tile_k=16)


@pytest.mark.parametrize(("spec_names", "compile_mode"),
                         [(("rbf",), "0"), (("tisa",), "0"), (("tisa",), "1")])
def test_tiled_kept_tiles_survive_a_second_backward(spec_names, compile_mode, monkeypatch):
    """Kept bias graphs are retained for a second backward, compiled profiles included (a
    compiled AOTAutograd backward with donated buffers refused ``retain_graph``: the SIR
    training step once failed on it)."""
    monkeypatch.setenv("BSATNP_COMPILE", compile_mode)
    q, k, v, bias, cq, ck, mask = make_problem(2, 2, 9, 7, 4, spec_names, seed=8)
    out, inputs = run_backend("tiled", q, k, v, bias, cq, ck, mask, tile_q=4, tile_k=8)
    first = torch.autograd.grad(out.square().sum(), inputs, retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), inputs)
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_one_valid_key_has_vanishing_score_gradients(backend):
    """With one valid key softmax is constant: gradients of q and of the bias vanish.

    The exact values are 0, so a relative error is undefined; check absolute round-off.
    """
    q, k, v, bias, cq, ck, mask = make_problem(2, 2, 6, 5, 4, ("rbf",), seed=4, mask_kind="all")
    mask[:, 1:] = False
    out, inputs = run_backend(backend, q, k, v, bias, cq, ck, mask, tile_q=2, tile_k=2)
    grads = torch.autograd.grad(out.sum(), inputs)
    assert torch.allclose(out, v[:, :, :1].expand_as(out), atol=1e-6)
    for g in (grads[0], *grads[3:]):
        assert g.abs().max() < 1e-4
    assert grads[2][:, :, 0].abs().min() > 0 and grads[2][:, :, 1:].abs().max() == 0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fully_masked_rows_are_zero_with_zero_gradient(backend):
    q, k, v, bias, cq, ck, mask = make_problem(3, 2, 7, 11, 4, ("rbf",), seed=9)
    mask[1] = False
    out, inputs = run_backend(backend, q, k, v, bias, cq, ck, mask, tile_q=3, tile_k=4)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    assert out[0].abs().max() > 0
    if backend != "flex":
        grads = torch.autograd.grad(out.sum(), inputs[:3])
        for g in grads:
            assert torch.isfinite(g).all()
        assert grads[0][1].abs().max() == 0  # dq of the empty task


@pytest.mark.parametrize("backend", GRAD_BACKENDS + ("flex",))
def test_padding_values_cannot_leak(backend):
    q, k, v, bias, cq, ck, mask = make_problem(2, 2, 8, 12, 4, ("rbf",), seed=11)
    out1, _ = run_backend(backend, q, k, v, bias, cq, ck, mask, tile_q=3, tile_k=5)
    k2, v2 = k.clone(), v.clone()
    ck2 = {r: c.clone() for r, c in ck.items()}
    pad = ~mask
    k2[pad[:, None, :, None].expand_as(k2)] = 1e4
    v2[pad[:, None, :, None].expand_as(v2)] = -1e4
    ck2["s"][pad] = 1e4
    out2, _ = run_backend(backend, q, k2, v2, bias, cq, ck2, mask, tile_q=3, tile_k=5)
    assert torch.equal(out1, out2) or (out1 - out2).abs().max() < 1e-6


def test_auto_picks_by_size_and_gradients_on_cpu():
    small = torch.zeros(1, 4, 100, 8)
    big = torch.zeros(1, 4, 8192, 8)
    assert choose_backend(small, small) == "dense"
    assert choose_backend(small, small, needs_grad=True) == "tiled"
    assert choose_backend(big, big) == "tiled"


def test_auto_runs_small_cpu_inference_in_the_fused_kernel_where_it_serves(monkeypatch):
    """``auto`` would pick ``dense`` by size; where the fused kernel serves it picks ``tiled``
    (and the kernel), not with a padded key or a bias the kernel does not compute."""
    calls = []
    attention = fused_cpu.attention
    monkeypatch.setattr(fused_cpu, "attention",
                        lambda *args: calls.append(1) or attention(*args))
    q, k, v, bias, cq, ck, mask = make_problem(1, 2, 30, 20, 8, ("rbf",), seed=3,
                                               mask_kind="all_valid")
    assert choose_backend(q, k) == "dense"
    ref_out, _ = reference(q, k, v, bias, cq, ck, mask)
    with torch.no_grad():
        with attention_runtime(compile="always"):
            out = biased_attention(q, k, v, bias, cq, ck, mask)
            assert calls == [1]
            biased_attention(q, k, v, bias, cq, ck, mask & (torch.arange(20) < 15))
            tisa = make_problem(1, 2, 30, 20, 8, ("tisa",), seed=3, mask_kind="all_valid")
            biased_attention(*tisa[:6])
        with attention_runtime(compile="never"):
            biased_attention(q, k, v, bias, cq, ck, mask)
    assert calls == [1]
    assert_close_rel(out, ref_out, 1e-5, "auto inference output")


@pytest.mark.skipif(not flex_available(), reason="this PyTorch build has no flex_attention")
def test_auto_on_cuda_trains_small_problems_dense_and_the_rest_flex():
    limit = CUDA_DENSE_TRAIN_MAX_ELEMENTS
    assert backend_for("cuda", 8 * 4 * 1536 * 512, needs_grad=True) == "dense"
    assert backend_for("cuda", limit, needs_grad=True) == "dense"
    assert backend_for("cuda", limit + 1, needs_grad=True) == "flex"
    assert backend_for("cuda", 8 * 4 * 1536 * 512, needs_grad=False) == "flex"
    assert backend_for("cpu", limit + 1, needs_grad=True) == "tiled"


def test_bad_backend_and_mask_dtype():
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="backend"):
        biased_attention(q, q, q, backend="magic")
    with pytest.raises(ValueError, match="key_mask"):
        biased_attention(q, q, q, key_mask=torch.ones(1, 2))


def test_tiled_backward_memory_is_bounded_by_tiles():
    """The autograd graph of the tiled backend saves no [Lq, Lk]-sized tensor."""
    q, k, v, bias, cq, ck, mask = make_problem(1, 2, 300, 200, 4, ("rbf",), seed=2)
    q.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        biased_attention(q, k, v, bias, cq, ck, mask, backend="tiled", tile_q=32, tile_k=32)
    assert saved and max(saved) < 300 * 200, saved


# ------------------------------------------------------------------ fused CPU kernels
@pytest.mark.parametrize("family", ["rbf", "exponential"])
@pytest.mark.parametrize("mask_kind", ["random", "all_valid"])
@pytest.mark.parametrize("shape", [(3, 2, 37, 29, 8), (2, 3, 19, 70, 32), (2, 2, 9, 40, 48)])
def test_fused_cpu_kernels_match_reference(family, mask_kind, shape, monkeypatch):
    """Training through the fused kernels (forward with kept probabilities; backward with
    dS, dq, dk, dv and the bias's gradients): values and every gradient against float64,
    tasks with random key masks (valid keys gathered to the front) and none masked, over
    blocks of query rows and their remainder, key counts past the 32-key vectors and
    widths below, at and past 32."""
    calls = []
    attention = fused_cpu.training_attention
    monkeypatch.setattr(fused_cpu, "training_attention",
                        lambda *args: calls.append(1) or attention(*args))
    problem = make_problem(*shape, (family,), seed=5, mask_kind=mask_kind)
    with attention_runtime(compile="always"):
        check_backend("tiled", problem)
    assert calls, "the fused kernels did not run"


def test_fused_training_gives_a_task_without_keys_zeros():
    q, k, v, bias, cq, ck, mask = make_problem(3, 2, 11, 13, 8, ("rbf",), seed=6,
                                               mask_kind="none_valid_in_first")
    q.requires_grad_()
    with attention_runtime(compile="always"):
        out = biased_attention(q, k, v, bias, cq, ck, mask, backend="tiled")
    out.sum().backward()
    assert out[0].abs().max() == 0 and q.grad[0].abs().max() == 0
    ref_out, _ = reference(q.detach(), k, v, bias, cq, ck, mask)
    assert_close_rel(out[1:].detach(), ref_out[1:], 1e-5, "tasks with keys")


def test_fused_kernels_share_rates_per_head_and_map_gradients_back():
    """Basis functions of a head with one rate (the constant init) are one term of the
    kernel; their gradients are those of each (a, b) in the reference."""
    q, k, v, bias, cq, ck, mask = make_problem(2, 3, 21, 17, 4, ("rbf",), seed=9,
                                               mask_kind="all_valid")
    with torch.no_grad():
        term = bias.terms[0]
        term.b.copy_(torch.tensor([[0.5] * 5, [1.0, 1.0, 2.0, 2.0, 2.0], [3.0] * 5]))
    fb = fused_cpu.fused_bias(bias, q)
    assert fb is not None and fb.rate.shape == (3, 2)
    torch.testing.assert_close(fb.amp[0], torch.stack([term.a[0].detach().sum(),
                                                       torch.tensor(0.0)]))
    with attention_runtime(compile="always"):
        check_backend("tiled", (q, k, v, bias, cq, ck, mask))


def test_fused_bias_serves_only_what_it_computes():
    q = torch.randn(1, 2, 4, 8)
    rbf = AttentionBias((BiasSpec("s"),), 2)
    with attention_runtime(compile="auto"):
        assert fused_cpu.fused_bias(rbf, q) is not None
        assert fused_cpu.fused_bias(None, q) is None
        assert fused_cpu.fused_bias(rbf, q.double()) is None
        for specs in [(SPECS["tisa"],), (SPECS["great_circle"],), (SPECS["scalar"],),
                      (BiasSpec("s"), BiasSpec("t", family="exponential", distance="abs"))]:
            assert fused_cpu.fused_bias(AttentionBias(specs, 2), q) is None, specs
    with attention_runtime(compile="never"):
        assert fused_cpu.fused_bias(rbf, q) is None


def test_a_failing_build_of_the_fused_kernels_falls_back_with_a_warning(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def refuse(**kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp_extension, "load_inline", refuse)
    with pytest.warns(RuntimeWarning, match="fused CPU attention kernels failed.*no compiler"):
        assert fused_cpu._extension.__wrapped__() is None


@pytest.mark.parametrize("family", ["rbf", "exponential"])
@pytest.mark.parametrize("shape", [(1, 3, 43, 33, 8), (2, 4, 37, 70, 32), (1, 2, 9, 64, 48),
                                   (1, 2, 150, 90, 32)])
@pytest.mark.parametrize("key_chunk", [fused_cpu.KEY_CHUNK, 16, 7])
def test_fused_cpu_inference_matches_reference(family, shape, key_chunk, monkeypatch):
    """Inference over unmasked keys is one fused kernel (q·kᵀ, bias, softmax, P·v), the keys
    a chunk at a time with an online softmax: against float64 over blocks of query rows and
    their remainder, key counts with and without a tail past the 32-key vectors, value
    widths below, at and past 32, one chunk or several (with a short last one)."""
    calls = []
    attention = fused_cpu.attention
    monkeypatch.setattr(fused_cpu, "attention",
                        lambda *args: calls.append(1) or attention(*args, key_chunk=key_chunk))
    B, H, Lq, Lk, D = shape
    q, k, v, bias, cq, ck, mask = make_problem(B, H, Lq, Lk, D, (family,), seed=4,
                                               mask_kind="all_valid")
    ref_out, _ = reference(q, k, v, bias, cq, ck, mask)
    with attention_runtime(compile="always"), torch.no_grad():
        out = biased_attention(q, k, v, bias, cq, ck, None, backend="tiled", tile_q=16)
    assert calls == [1]
    assert_close_rel(out, ref_out, 1e-5, "fused inference output")


def test_fused_inference_waits_for_its_warmup_before_building(monkeypatch):
    monkeypatch.setattr(fused_cpu, "_built", lambda: False)
    monkeypatch.setattr(fused_cpu, "_built_on_disk", lambda: False)
    monkeypatch.setattr(fused_cpu, "INFERENCE_WARMUP", 100)
    monkeypatch.setattr(fused_cpu, "_declined", [0])
    q = torch.randn(1, 2, 4, 8)
    rbf = AttentionBias((BiasSpec("s"),), 2)
    with attention_runtime(compile="auto"):
        assert fused_cpu.fused_bias(rbf, q, inference_scores=60) is None  # 60 declined
        assert fused_cpu.fused_bias(rbf, q, inference_scores=60) is None  # 120 declined
        assert fused_cpu.fused_bias(rbf, q, inference_scores=60) is not None
        assert fused_cpu.fused_bias(rbf, q) is not None  # training builds at once
    monkeypatch.setattr(fused_cpu, "_declined", [0])
    with attention_runtime(compile="always"):
        assert fused_cpu.fused_bias(rbf, q, inference_scores=1) is not None


def test_fused_inference_skips_the_warmup_when_the_build_is_on_disk(monkeypatch, tmp_path):
    monkeypatch.setattr(fused_cpu, "_built", lambda: False)
    monkeypatch.setattr(fused_cpu, "INFERENCE_WARMUP", 100)
    monkeypatch.setattr(fused_cpu, "_declined", [0])
    q = torch.randn(1, 2, 4, 8)
    rbf = AttentionBias((BiasSpec("s"),), 2)
    on_disk = fused_cpu._built_on_disk.__wrapped__  # uncached
    assert fused_cpu._extension() is not None  # built, so in torch's extension cache
    assert on_disk()
    with attention_runtime(compile="auto"):
        monkeypatch.setattr(fused_cpu, "_built_on_disk", lambda: True)
        assert fused_cpu.fused_bias(rbf, q, inference_scores=1) is not None
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache
    assert not on_disk()


def test_fused_training_packed_equals_padded_and_padding_cannot_leak(monkeypatch):
    """The fused training path (valid keys packed to the front, padding skipped) against the
    eager scan over the padded keys: values and gradients to round-off; and junk in the
    padded slots changes nothing."""
    calls = []
    attention = fused_cpu.training_attention
    monkeypatch.setattr(fused_cpu, "training_attention",
                        lambda *args: calls.append(1) or attention(*args))
    q, k, v, bias, cq, ck, mask = make_problem(3, 2, 13, 40, 8, ("rbf",), seed=12)

    def run(k, v, ck, compile_):
        with attention_runtime(compile=compile_):
            out, inputs = run_backend("tiled", q, k, v, bias, cq, ck, mask)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        return out, torch.autograd.grad((out * weight).sum(), inputs)

    packed, packed_grads = run(k, v, ck, "always")
    assert calls == [1]
    padded, padded_grads = run(k, v, ck, "never")
    assert calls == [1]
    assert_close_rel(packed, padded.double(), 1e-5, "packed vs padded output")
    for g, ref in zip(packed_grads, padded_grads):
        assert_close_rel(g, ref.double(), 1e-5, "packed vs padded gradient")
    pad = ~mask
    k2, v2 = k.clone(), v.clone()
    k2[pad[:, None, :, None].expand_as(k2)] = 1e4
    v2[pad[:, None, :, None].expand_as(v2)] = -1e4
    ck2 = {"s": ck["s"].clone()}
    ck2["s"][pad] = 1e4
    junk, junk_grads = run(k2, v2, ck2, "always")
    assert torch.equal(junk, packed)
    (dq, dk, dv, *d_bias), (rq, rk, rv, *r_bias) = junk_grads, packed_grads
    valid = mask[:, None, :, None].expand_as(dk)
    assert torch.equal(dq, rq) and all(map(torch.equal, d_bias, r_bias))
    assert torch.equal(dk[valid], rk[valid]) and torch.equal(dv[valid], rv[valid])
    assert dk[~valid].abs().max() == 0 and dv[~valid].abs().max() == 0
