"""ConvCNP baseline: shapes, config, masking, gradients, training, translation equivariance."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_same, dropped, random_batch, shifted, with_nan_padding

from bsatnp import Batch
from bsatnp.models.convcnp import ConvCNP, ConvCNPConfig, set_conv_to_grid, set_conv_to_points
from bsatnp.tasks import eval_batches
from bsatnp.tasks.gp2d import GP2DTask

SMALL = {"points_per_unit": 8.0, "channels": 8, "depth": 2, "head_hidden": (16,)}
NETS = {"unet": {}, "residual": {"net": "residual", "num_blocks": 2, "kernel_size": 5}}


def gp_batch(seed: int = 0, batch_size: int = 2) -> Batch:
    task = GP2DTask(batch_size=batch_size, n_ctx=64, n_test=64, min_ctx=16, max_ctx=63)
    return next(eval_batches(task, 1, seed=seed))


def test_convcnp_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = ConvCNP()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ConvCNP default parameters: {n_params:,}")
    assert n_params == 596_100
    dist = model(random_batch(B=3, Lc=10, Lt=7))
    assert dist.mean.shape == dist.stddev.shape == (3, 7, 1)
    assert bool((dist.stddev > 0).all())
    two = ConvCNP(dim_f=2, **SMALL)(random_batch(Lt=5, dim_f=2))
    assert two.mean.shape == two.stddev.shape == (2, 5, 2)
    floor = ConvCNP(min_std=0.1, **SMALL)(random_batch())
    assert bool((floor.stddev >= 0.1).all())


def test_convcnp_config_round_trip_and_errors():
    config = ConvCNPConfig(grid_bounds=(-3.0, 3.0), **SMALL)
    assert ConvCNPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ConvCNP(config).config == ConvCNP(grid_bounds=(-3.0, 3.0), **SMALL).config == config
    with pytest.raises(ValueError, match="ConvCNPConfig: unknown key"):
        ConvCNPConfig.from_dict({"dim": 64})
    with pytest.raises(ValueError, match="dim_s"):
        ConvCNPConfig(dim_s=1)
    with pytest.raises(ValueError, match="dim_s"):
        ConvCNP(dim_s=3)
    for bad in ({"kernel_size": 4}, {"grid_bounds": (1.0, 1.0)}, {"points_per_unit": 0.0},
                {"min_std": 1.0}, {"depth": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ConvCNPConfig(**bad)


def test_factorised_set_convs_match_dense_rbf_weights():
    g = torch.Generator().manual_seed(0)
    B, Lc, Lt, Df, C, size, spacing = 2, 9, 5, 2, 3, (6, 7), 0.25
    ls = torch.tensor(0.3)
    rel_c, rel_t = 1.5 * torch.rand(B, Lc, 2, generator=g), 1.5 * torch.rand(B, Lt, 2, generator=g)
    f, z = torch.randn(B, Lc, Df, generator=g), torch.randn(B, C, *size, generator=g)
    mask = torch.rand(B, Lc, generator=g) < 0.7
    gx, gy = torch.meshgrid(spacing * torch.arange(size[0]), spacing * torch.arange(size[1]),
                            indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # [G, 2]

    def dense(rel):  # [B, L, G]
        return torch.exp(-0.5 * ((rel[:, :, None] - grid) ** 2).sum(-1) / ls**2)

    w = dense(rel_c) * mask[..., None]
    density = w.sum(1)  # [B, G]
    values = torch.einsum("bcg,bcd->bdg", w, f) / (density[:, None] + 1e-8)
    want = torch.cat([density[:, None], values], dim=1).reshape(B, 1 + Df, *size)
    got = set_conv_to_grid(rel_c, f, mask, size, spacing, ls)
    assert torch.allclose(got, want, atol=1e-5)
    want = torch.einsum("btg,bcg->btc", dense(rel_t), z.reshape(B, C, -1))
    assert torch.allclose(set_conv_to_points(rel_t, z, spacing, ls), want, atol=1e-5)
    # the CNN hands over a channels-last z: the same values, and the same gradients as the
    # dense sum's
    z_last = z.contiguous(memory_format=torch.channels_last).requires_grad_()
    z_dense = z.clone().requires_grad_()
    got = set_conv_to_points(rel_t, z_last, spacing, ls)
    want = torch.einsum("btg,bcg->btc", dense(rel_t), z_dense.reshape(B, C, -1))
    assert torch.allclose(got, want, atol=1e-5)
    weights = torch.randn(B, Lt, C, generator=g)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.allclose(z_last.grad, z_dense.grad, atol=1e-5)


@pytest.mark.parametrize("net", NETS)
def test_convcnp_masked_context_equals_dropped_context(net):
    torch.manual_seed(0)
    model = ConvCNP(**{**SMALL, **NETS[net]}).eval()
    one = random_batch(B=1, Lc=20, seed=4)
    batch = random_batch(B=3, Lc=20, seed=5)
    with torch.no_grad():
        assert_same(model(one), model(dropped(one)))
        assert_same(model(batch), model(with_nan_padding(batch)), atol=0)


@pytest.mark.parametrize("net", NETS)
def test_convcnp_adaptive_grid_is_translation_equivariant(net):
    torch.manual_seed(0)
    model = ConvCNP(**{**SMALL, **NETS[net]}).eval()
    batch = gp_batch(seed=3)
    per_task = torch.tensor([10.0, -3.5])[:, None, None]
    with torch.no_grad():
        base = model(batch)
        assert_same(base, model(shifted(batch, 10.0)), atol=1e-4)
        assert_same(base, model(shifted(batch, per_task)), atol=1e-4)


def test_convcnp_fixed_grid_bounds():
    torch.manual_seed(0)
    model = ConvCNP(grid_bounds=(-2.5, 2.5), **SMALL).eval()
    batch = gp_batch(seed=4)
    origin, size = model.grid(batch)
    assert size == (41, 41) and bool((origin == -2.5).all())
    with torch.no_grad():
        base = model(batch)
        assert base.mean.shape == (2, 64, 1) and bool(torch.isfinite(base.mean).all())
        moved = model(shifted(batch, 10.0))  # outside the bounds: runs, but differs
        assert (base.mean - moved.mean).abs().max() > 1e-3
    assert model.grid(shifted(batch, 10.0))[1] == size


def test_convcnp_grid_guard_names_the_locations():
    batch = random_batch()
    far = batch.s_test.clone()
    far[0, 0] = 1e3
    with pytest.raises(ValueError, match="s_test"):
        ConvCNP(**SMALL)(batch.map(s_test=far))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_convcnp_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = ConvCNP(**SMALL).eval()
    batch = gp_batch(seed=5)
    with torch.no_grad():
        cpu = model(batch)
        gpu = model.cuda()(batch.to("cuda"))
    assert gpu.mean.device.type == "cuda"
    assert torch.allclose(gpu.mean.cpu(), cpu.mean, atol=1e-3)
    assert torch.allclose(gpu.stddev.cpu(), cpu.stddev, atol=1e-3)


def test_the_paper_preset_builds_the_residual_net_at_its_size():
    """The paper's ConvCNP (SPEC §9): 16 points per unit, 8 residual blocks of 9x9
    depthwise kernels, 128 channels: 486,404 parameters here."""
    from bsatnp.experiment import load_experiment
    from bsatnp.models.convcnp import ResidualCNN

    model = load_experiment("gp2d_convcnp_paper").build_model()
    assert isinstance(model.cnn, ResidualCNN) and len(model.cnn.blocks) == 8
    assert model.cnn.blocks[0][2].kernel_size == (9, 9)
    assert sum(p.numel() for p in model.parameters()) == 486_404
    with pytest.raises(ValueError, match="num_blocks"):
        ConvCNPConfig(net="residual", num_blocks=0)
