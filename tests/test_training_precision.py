"""bf16 mixed-precision training (issue 31): what stays float32, what the trainer records,
and the gradients against float32 on the same batch."""

from __future__ import annotations

import warnings

import pytest
import torch

from bsatnp import Batch
from bsatnp import precision as precision_module
from bsatnp.attention import biased_attention
from bsatnp.attention.biases import AttentionBias, BiasSpec
from bsatnp.io.checkpoint import load_checkpoint
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP
from bsatnp.models.convcnp import ConvCNP
from bsatnp.models.tetnp import TETNP
from bsatnp.models.tnpd import TNPD
from bsatnp.precision import training_precision
from bsatnp.train.config import TrainConfig
from bsatnp.train.trainer import Trainer

FAMILIES = [BSATNP, TNPD, TETNP, ConvCNP]


@pytest.fixture(autouse=True)
def _amx(monkeypatch):
    """Every test behaves as on a CPU with bf16 matrix units (no warning), unless it says."""
    monkeypatch.setattr(precision_module, "cpu_has_bf16_matrix_units", lambda: True)


def gp_batch(seed: int = 0, batch_size: int = 3, n_ctx: int = 40, n_test: int = 30) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s_ctx = torch.rand(batch_size, n_ctx, 2, generator=g) * 4 - 2
    s_test = torch.rand(batch_size, n_test, 2, generator=g) * 4 - 2
    f_ctx = torch.sin(2 * s_ctx.sum(-1, keepdim=True)) + 0.1 * torch.randn(
        batch_size, n_ctx, 1, generator=g)
    f_test = torch.sin(2 * s_test.sum(-1, keepdim=True))
    mask_ctx = torch.arange(n_ctx)[None] < torch.tensor([n_ctx, n_ctx // 2, 7])[:batch_size, None]
    return Batch(s_ctx=s_ctx, f_ctx=f_ctx, s_test=s_test, f_test=f_test, mask_ctx=mask_ctx)


def family_model(cls, seed: int = 0):
    torch.manual_seed(seed)
    if cls is BSATNP:
        return BSATNP(num_blocks=2, dim=32, num_heads=2, qkv_dim=32, ffn_dim=64,
                      embed_hidden=(64,), head_hidden=(64,))
    if cls is ConvCNP:
        return ConvCNP(channels=8, depth=2)
    return cls()


def loss_and_grads(model, batch: Batch, mode: str) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with training_precision(mode, "cpu"):
        predictive = model(batch)
    loss = masked_nll(predictive, batch.f_test, batch.test_mask())
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


# ------------------------------------------------------------------------ attention
def test_biased_attention_under_cpu_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for n in (12, 20, 20))
    coords_q = {"s": torch.rand(2, 12, 2, generator=g)}
    coords_k = {"s": torch.rand(2, 20, 2, generator=g)}
    mask = torch.arange(20)[None] < torch.tensor([[20], [9]])
    bias = AttentionBias((BiasSpec("s"),), 2)
    for backend in ("dense", "tiled"):
        # bf16 inputs, as the projections give them under autocast: the same as float32
        # attention on those values, to the bit.
        qb, kb, vb = (x.bfloat16() for x in (q, k, v))
        expected = biased_attention(qb.float(), kb.float(), vb.float(), bias, coords_q,
                                    coords_k, mask, backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = biased_attention(qb, kb, vb, bias, coords_q, coords_k, mask, backend=backend)
        assert got.dtype == torch.float32
        assert torch.equal(got, expected), backend


# ------------------------------------------------------------------------ the models
def test_bsatnp_keeps_its_residual_stream_and_head_in_float32_under_bf16():
    model = family_model(BSATNP)
    batch = gp_batch()
    seen: dict[str, list[torch.dtype]] = {"block": [], "ffn": []}
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: seen["block"].append(o.dtype))
        block.ffn.register_forward_hook(lambda m, i, o: seen["ffn"].append(o.dtype))
    with training_precision("bf16", "cpu"):
        encoded = model.encode(batch)
        predictive = model.decode(encoded, batch)
    assert all(z.dtype == torch.float32 for z in encoded)  # the residual stream
    assert predictive.mean.dtype == predictive.stddev.dtype == torch.float32
    # the feed-forward networks did run in bf16 (what the mode is for) ...
    with training_precision("bf16", "cpu"):
        for block, z in zip(model.blocks, encoded):
            out = block.ffn(block.norm2(z))
            assert out.dtype == torch.bfloat16
    # ... and fp32 runs nothing in bf16
    with training_precision("fp32", "cpu"):
        assert model.blocks[0].ffn(encoded[0]).dtype == torch.float32


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_bf16_gradients_follow_float32_on_the_same_batch(cls):
    model = family_model(cls)
    batch = gp_batch(seed=2)
    loss32, grads32 = loss_and_grads(model, batch, "fp32")
    loss16, grads16 = loss_and_grads(model, batch, "bf16")
    assert len(grads16) == len(grads32)
    # bf16 rounds the linear layers' inputs to 8 bits of mantissa (relative 2^-9): the loss
    # moves by a fraction of a percent and the gradient keeps its direction.
    assert abs(loss16 - loss32) < 1e-2 * max(1.0, abs(loss32))
    flat32 = torch.cat([g.flatten() for g in grads32])
    flat16 = torch.cat([g.flatten() for g in grads16])
    cosine = torch.nn.functional.cosine_similarity(flat32, flat16, dim=0)
    assert cosine > 0.99, float(cosine)
    assert all(g.dtype == torch.float32 for g in grads16)


# ------------------------------------------------------------------------ the trainer
def test_trainer_runs_bf16_steps_and_records_the_precision(tmp_path):
    batch = gp_batch()
    model = family_model(BSATNP)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(steps=4, lr=1e-3, val_every=2, save_every=2, log_every=1,
                      precision="bf16", out_dir=str(tmp_path))
    trainer = Trainer(model, lambda g: batch, cfg)
    trainer.fit(progress=False)
    assert trainer.step == 4 and not trainer.bad_steps
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    saved = load_checkpoint(tmp_path / "last.safetensors")
    assert saved.train_config["precision"] == "bf16"
    resumed = Trainer.from_checkpoint(tmp_path / "last.safetensors", lambda g: batch)
    assert resumed.config.precision == "bf16"


def test_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="fp32.*bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="fp32.*bf16"), training_precision("tf32", "cpu"):
        pass


def test_bf16_on_a_cpu_without_matrix_units_warns(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16_matrix_units", lambda: False)
    with pytest.warns(UserWarning, match="without bf16 matrix units"), \
            training_precision("bf16", "cpu"):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with training_precision("fp32", "cpu"):
            pass
