"""BSA-TNP model: parity with the reference, invariances, architecture sweep, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FIXTURE, assert_same, random_batch, randomise_biases, shifted

from bsatnp import Batch
from bsatnp.attention import BiasSpec
from bsatnp.io.reference_weights import load_dl4bi_params
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP, BSATNPConfig


def fixture_batch(z) -> Batch:
    t = lambda k: torch.from_numpy(z[f"input:{k}"])  # noqa: E731
    return Batch(f_ctx=t("f_ctx"), s_ctx=t("s_ctx"), mask_ctx=t("mask_ctx"),
                 s_test=t("s_test"), f_test=t("f_test"))


@pytest.mark.parametrize("backend", ["dense", "tiled"])
def test_parity_with_reference_fixture(backend):
    assert FIXTURE.exists(), f"parity fixture missing: {FIXTURE}"
    z = np.load(FIXTURE)
    model = BSATNP(backend=backend)
    load_dl4bi_params(model, {k[6:]: z[k] for k in z.files if k.startswith("param:")})
    batch = fixture_batch(z)
    dist = model(batch)
    assert np.abs(dist.mean.detach().numpy() - z["output:mu"]).max() <= 1e-5
    assert np.abs(dist.stddev.detach().numpy() - z["output:std"]).max() <= 1e-5
    loss = masked_nll(dist, batch.f_test, batch.test_mask())
    assert abs(loss.item() - 1.830607) <= 1e-5
    assert abs(loss.item() - float(z["output:nll"])) <= 1e-5
    loss.backward()
    norm = math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
    assert abs(norm - 17.1739) <= 1e-3
    assert abs(norm - float(z["output:grad_global_norm"])) <= 1e-3


def test_parameter_count_matches_paper_model():
    assert sum(p.numel() for p in BSATNP().parameters()) == 475_770


def model_for_invariance(backend="dense", **kw):
    torch.manual_seed(0)
    model = BSATNP(backend=backend, **kw).eval()
    randomise_biases(model)
    return model


@pytest.mark.parametrize("backend", ["dense", "tiled"])
@pytest.mark.parametrize("shift", [10.0, 1e4])
def test_translation_invariance(backend, shift):
    model = model_for_invariance(backend, tile_q=7, tile_k=9)
    batch = random_batch(seed=1)
    with torch.no_grad():
        base = model(batch)
        moved = model(shifted(batch, torch.tensor([shift, -shift / 2])))
        other = model(batch.map(f_ctx=batch.f_ctx + 1.0))
    assert_same(base, moved)
    assert (base.mean - other.mean).abs().max() > 1e-3  # the check can fail


def test_embedding_locations_breaks_translation_invariance():
    model = model_for_invariance(use_s="embed")
    batch = random_batch(seed=1)
    with torch.no_grad():
        diff = (model(batch).mean - model(shifted(batch, torch.tensor([10.0, 10.0]))).mean)
    assert diff.abs().max() > 1e-3


def test_rotation_invariance_of_isotropic_bias():
    model = model_for_invariance()
    batch = random_batch(seed=2)
    theta = torch.tensor(0.7)
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()]),
                       torch.stack([theta.sin(), theta.cos()])])
    with torch.no_grad():
        base = model(batch)
        turned = model(batch.map(s_ctx=batch.s_ctx @ rot.T, s_test=batch.s_test @ rot.T))
    assert_same(base, turned, atol=1e-4)


def test_context_permutation_invariance():
    model = model_for_invariance()
    batch = random_batch(seed=3)
    perm = torch.randperm(batch.n_ctx, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(batch)
        permuted = model(batch.map(s_ctx=batch.s_ctx[:, perm], f_ctx=batch.f_ctx[:, perm],
                                   mask_ctx=batch.mask_ctx[:, perm]))
    assert_same(base, permuted)


@pytest.mark.parametrize("backend", ["dense", "tiled"])
def test_masked_context_equals_dropped_context(backend):
    model = model_for_invariance(backend, tile_k=5)
    batch = random_batch(B=1, Lc=20, seed=4)
    n = int(batch.mask_ctx.sum())
    dropped = batch.map(s_ctx=batch.s_ctx[:, :n], f_ctx=batch.f_ctx[:, :n], mask_ctx=None)
    with torch.no_grad():
        assert_same(model(batch), model(dropped))


def test_padding_values_change_nothing():
    model = model_for_invariance()
    batch = random_batch(seed=5)
    pad = ~batch.mask_ctx
    s_pad, f_pad = batch.s_ctx.clone(), batch.f_ctx.clone()
    s_pad[pad], f_pad[pad] = 1e4, 1e4
    nan_f = batch.f_ctx.clone()
    nan_f[pad] = float("nan")
    with torch.no_grad():
        base = model(batch)
        assert_same(base, model(batch.map(s_ctx=s_pad, f_ctx=f_pad)), atol=0)
        assert_same(base, model(batch.map(f_ctx=nan_f)), atol=0)


def test_backends_agree_at_model_level():
    batch = random_batch(B=3, Lc=40, Lt=33, seed=6)
    outs = []
    for backend in ("dense", "tiled"):
        model = model_for_invariance(backend, tile_q=8, tile_k=16)
        dist = model(batch)
        loss = masked_nll(dist, batch.f_test, batch.test_mask())
        grads = torch.autograd.grad(loss, list(model.parameters()))
        outs.append((dist.mean.detach(), torch.cat([g.flatten() for g in grads])))
    assert (outs[0][0] - outs[1][0]).abs().max() < 1e-5
    g0, g1 = outs[0][1], outs[1][1]
    assert (g0 - g1).abs().max() / g0.abs().max() < 1e-4


SWEEP = [
    dict(),
    dict(use_s="embed"),
    dict(use_s="both"),
    dict(dim_t=1, use_t="bias"),
    dict(dim_t=1, use_t="both", min_std=0.05),
    dict(dim_x=3),
    dict(dim_x=2, use_x="bias", bias_x=BiasSpec(role="x", family="exponential", num_basis=2)),
    dict(bias_s=BiasSpec(role="s", family="tisa", num_basis=3, init="spread")),
    dict(bias_s=BiasSpec(role="s", family="scalar")),
    dict(likelihood="categorical", dim_f=3),
    dict(dim_f=2, num_blocks=2, num_heads=2, qkv_dim=32, dim=32),
]


@pytest.mark.parametrize("overrides", SWEEP, ids=[str(o) for o in SWEEP])
def test_architecture_sweep_forward_backward(overrides):
    config = BSATNPConfig(**overrides)
    model = BSATNP(config)
    batch = random_batch(dim_s=config.dim_s, dim_x=config.dim_x, dim_t=config.dim_t,
                         dim_f=config.dim_f, seed=7)
    if config.likelihood == "categorical":
        labels = torch.randint(0, 3, batch.f_test.shape[:2])
        batch = batch.map(f_test=torch.nn.functional.one_hot(labels, 3).float())
    dist = model(batch)
    loss = masked_nll(dist, batch.f_test, batch.test_mask())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if config.likelihood == "gaussian":
        assert dist.mean.shape == (2, 16, config.dim_f)
        assert (dist.stddev >= config.min_std).all()
        sample = dist.sample()
        assert sample.shape == dist.mean.shape
    else:
        assert dist.logits.shape == (2, 16, 3)
    rebuilt = BSATNPConfig.from_dict(config.to_dict())
    assert rebuilt == config


def test_spread_init_breaks_basis_symmetry():
    model = BSATNP(bias_s=BiasSpec(role="s", init="spread"))
    b = model.blocks[0].attn.bias.terms[0].b
    assert len(set(b[0].tolist())) == b.shape[1]
    constant = BSATNP().blocks[0].attn.bias.terms[0].b
    assert (constant == 1).all()


# ---------------------------------------------------------------- bad input
def bad(batch: Batch, **changes) -> Batch:
    return batch.map(**changes)


BAD_CASES = {
    "batch size": (lambda b: bad(b, s_test=b.s_test[:1], f_test=b.f_test[:1]), "s_test"),
    "ctx length": (lambda b: bad(b, s_ctx=b.s_ctx[:, :-1]), "s_ctx"),
    "feature dims": (lambda b: bad(b, s_ctx=torch.cat([b.s_ctx, b.s_ctx], -1)), "s_ctx"),
    "test dims": (lambda b: bad(b, s_test=b.s_test[..., :1]), "s_test"),
    "nan ctx": (lambda b: bad(b, f_ctx=b.f_ctx.masked_fill(b.mask_ctx[..., None], float("nan"))),
                "f_ctx"),
    "inf s": (lambda b: bad(b, s_test=b.s_test + float("inf")), "s_test"),
    "missing role": (lambda b: bad(b, s_ctx=None, s_test=None), "s_ctx"),
    "half role": (lambda b: bad(b, s_test=None), "s_test"),
    "unmatched role": (lambda b: bad(b, x_test=b.s_test), "x_ctx"),
    "no context": (lambda b: bad(b, mask_ctx=torch.zeros_like(b.mask_ctx)), "mask_ctx"),
    "one empty task": (
        lambda b: bad(b, mask_ctx=b.mask_ctx.index_fill(0, torch.tensor([1]), False)), "mask_ctx"
    ),
    "mask dtype": (lambda b: bad(b, mask_ctx=b.mask_ctx.float()), "mask_ctx"),
    "2d input": (lambda b: bad(b, f_ctx=b.f_ctx[..., 0]), "f_ctx"),
    "int input": (lambda b: bad(b, s_ctx=b.s_ctx.long()), "s_ctx"),
}


@pytest.mark.parametrize("case", BAD_CASES, ids=list(BAD_CASES))
def test_bad_input_raises_value_error_naming_argument(case, batch):
    make, name = BAD_CASES[case]
    with pytest.raises(ValueError, match=name):
        BSATNP()(make(batch))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="use_s"):
        BSATNPConfig(use_s="sideways")
    with pytest.raises(ValueError, match="backend"):
        BSATNP(backend="quantum")
    with pytest.raises(ValueError, match="unknown"):
        BSATNPConfig.from_dict({"dim_z": 3})


@pytest.mark.parametrize("backend", ["dense", "tiled"])
def test_conditioned_chunks_equal_one_pass(backend):
    """The context is encoded once; test points in chunks match the joint forward pass."""
    model = BSATNP(dim_x=2, dim_t=1, use_x="embed", num_blocks=2, backend=backend,
                   tile_q=3, tile_k=5).eval()
    randomise_biases(model)
    batch = random_batch(B=2, Lc=20, Lt=17, seed=11, dim_x=2, dim_t=1)
    with torch.no_grad():
        whole = model(batch)
    conditioned = model.condition(batch)
    means, stds = [], []
    for lo, hi in ((0, 5), (5, 6), (6, 17)):
        dist = conditioned.predictive({f"{r}_test": batch.test(r)[:, lo:hi] for r in "xst"})
        means.append(dist.mean)
        stds.append(dist.stddev)
    torch.testing.assert_close(torch.cat(means, 1), whole.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(stds, 1), whole.stddev, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="t_test is required"):
        conditioned.predictive({"s_test": batch.s_test, "x_test": batch.x_test})


def test_inference_precision_is_scoped_and_checked():
    """The reduced-precision context restores the matmul setting (even after an error), is
    float32 on the CPU, and names the valid modes."""
    from bsatnp.precision import inference_precision

    model = BSATNP(dim=16, num_blocks=1, qkv_dim=16, ffn_dim=32).eval()
    batch = random_batch(2, 7, 5, seed=3)
    before = torch.get_float32_matmul_precision()
    with torch.no_grad():
        reference = model(batch).mean
        for mode in ("fp32", "tf32", "bf16"):
            with inference_precision(mode):
                assert torch.equal(model(batch).mean, reference)  # CPU: float32 throughout
            assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), inference_precision("tf32"):
        raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="fp32"), inference_precision("fp16"):
        pass
