"""Checkpoint files: round trip, atomic writes, and clear errors on bad files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from conftest import edited_checkpoint
from safetensors.torch import save_file

import bsatnp
from bsatnp import Batch
from bsatnp.io.checkpoint import load_checkpoint, load_model, save_checkpoint
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP
from bsatnp.train.schedule import cosine_schedule

TINY = dict(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,), head_hidden=(32,))


def tiny_model(seed: int = 0, **overrides) -> BSATNP:
    torch.manual_seed(seed)
    return BSATNP(**{**TINY, **overrides})


def small_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        s_ctx=torch.rand(2, 10, 2, generator=g), f_ctx=torch.randn(2, 10, 1, generator=g),
        s_test=torch.rand(2, 6, 2, generator=g), f_test=torch.randn(2, 6, 1, generator=g),
    )


def trained_state():
    """A model, optimizer and scheduler after two steps (so the optimizer has state)."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = cosine_schedule(optimizer, 10, 0.1)
    for seed in range(2):
        batch = small_batch(seed)
        loss = masked_nll(model(batch), batch.f_test, batch.test_mask())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def assert_same(a, b) -> None:
    """Recursive equality with exact tensor comparison (dtype, shape and bits)."""
    if isinstance(a, dict):  # dict or OrderedDict; tensor files store keys sorted
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
        return
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path):
    model, optimizer, scheduler = trained_state()
    rng = {"torch": torch.get_rng_state(), "data": torch.Generator().manual_seed(3).get_state()}
    extra = {"task": {"kernel": "rbf", "lengthscale": (0.1, 0.5)}, "normaliser": {
        "mean": torch.tensor([0.5]), "std": 2.0}, "weird keys": {1: "a", "__tensor__": "b"}}
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizer, scheduler, step=7,
                           rng=rng, train_config={"lr": 1e-3, "betas": (0.9, 0.999)},
                           extra=extra, best_metric=1.25)
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == {"family": "bsatnp", **model.config.to_dict()}
    assert_same(ckpt.model_state, model.state_dict())
    assert_same(ckpt.optimizer_state, optimizer.state_dict())
    assert_same(ckpt.scheduler_state, scheduler.state_dict())
    assert_same(ckpt.rng, rng)
    assert_same(ckpt.extra, extra)
    assert ckpt.train_config == {"lr": 1e-3, "betas": (0.9, 0.999)}
    assert (ckpt.step, ckpt.best_metric, ckpt.version) == (7, 1.25, bsatnp.__version__)

    fresh = torch.optim.AdamW(tiny_model(1).parameters())
    ckpt.restore(fresh, "optimizer")
    assert_same(fresh.state_dict(), optimizer.state_dict())


def test_load_model_reproduces_predictions(tmp_path):
    model, _, _ = trained_state()
    save_checkpoint(tmp_path / "m.safetensors", model)
    loaded = load_model(tmp_path / "m.safetensors")
    assert not loaded.training
    assert loaded.config == model.config
    model.eval()
    for ours, theirs in zip(model.predict(small_batch(5)), loaded.predict(small_batch(5)),
                            strict=True):
        assert torch.equal(ours, theirs)
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.optimizer_state is None and ckpt.scheduler_state is None
    assert ckpt.extra is None and ckpt.best_metric is None and ckpt.rng == {}


def test_atomic_write_leaves_no_temp_files(tmp_path):
    model = tiny_model()
    for step in range(3):
        save_checkpoint(tmp_path / "last.safetensors", model, step=step)
    assert os.listdir(tmp_path) == ["last.safetensors"]
    assert load_checkpoint(tmp_path / "last.safetensors").step == 2


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "last.safetensors", model, step=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(os, crash_in, crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_model(seed=1), step=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.safetensors"]
    ckpt = load_checkpoint(path)
    assert ckpt.step == 1
    assert_same(ckpt.model_state, model.state_dict())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.safetensors")


def _truncated(path, data):
    path.write_bytes(data[: len(data) // 2])


def _header_cut(path, data):
    path.write_bytes(data[:100])


def _random(path, data):
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def _empty(path, data):
    path.write_bytes(b"")


def _pickle(path, data):
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))


def _torch_save(path, data):
    torch.save(tiny_model().state_dict(), path)


@pytest.mark.parametrize("damage", [_truncated, _header_cut, _random, _empty, _pickle,
                                    _torch_save])
def test_unreadable_files_raise_value_error(tmp_path, damage):
    good = save_checkpoint(tmp_path / "good.safetensors", tiny_model(), step=3)
    bad = tmp_path / "bad.safetensors"
    damage(bad, good.read_bytes())
    with pytest.raises(ValueError, match="bad.safetensors.*not a readable safetensors"):
        load_checkpoint(bad)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file(tiny_model().state_dict(), str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="foreign.safetensors.*not a bsatnp checkpoint"):
        load_model(path)


def test_newer_format_version(tmp_path):
    path = tmp_path / "future.safetensors"
    save_file({"model/w": torch.zeros(1)}, str(path),
              metadata={"format": "bsatnp-checkpoint", "format_version": "99"})
    with pytest.raises(ValueError, match="future.safetensors.*format version '99'"):
        load_checkpoint(path)


def test_damaged_metadata(tmp_path):
    path = tmp_path / "damaged.safetensors"
    save_file({"model/w": torch.zeros(1)}, str(path),
              metadata={"format": "bsatnp-checkpoint", "format_version": "1", "step": "{"})
    with pytest.raises(ValueError, match="damaged.safetensors"):
        load_checkpoint(path)


def test_state_that_does_not_fit(tmp_path):
    model, optimizer, _ = trained_state()
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizer)
    ckpt = load_checkpoint(path)
    other = tiny_model(dim=8)
    with pytest.raises(ValueError, match="c.safetensors.*model state does not fit"):
        ckpt.restore(other, "model")
    with pytest.raises(ValueError, match="optimizer state does not fit"):
        ckpt.restore(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), "optimizer")
    with pytest.raises(ValueError, match="holds no scheduler state"):
        ckpt.restore(cosine_schedule(optimizer, 10, 0.1), "scheduler")
    ckpt.model_state.pop("norm.weight")
    with pytest.raises(ValueError, match="model state does not fit"):
        ckpt.build_model()
    ckpt.model_config["dim"] = -3
    with pytest.raises(ValueError, match="model config is invalid"):
        ckpt.build_model()


def test_save_rejects_bad_values(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="uint8"):
        save_checkpoint(tmp_path / "a.safetensors", model, rng={"torch": torch.zeros(3)})
    with pytest.raises(ValueError, match="cannot store a object"):
        save_checkpoint(tmp_path / "a.safetensors", model, extra={"x": object()})
    assert not any(tmp_path.iterdir())


def test_each_config_is_stored_once_and_format_1_files_still_load(tmp_path):
    from safetensors import safe_open

    from bsatnp.experiment import ExperimentConfig, experiment_from_checkpoint
    from bsatnp.experiment_trainer import build_trainer

    config = ExperimentConfig.from_dict({
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        "task": {"name": "geodesic", "batch_size": 2, "n_ctx": 8, "n_test": 6, "min_ctx": 2,
                 "max_ctx": 7},
        "train": {"steps": 1, "batch_size": 2, "val_batches": 1, "out_dir": str(tmp_path)},
    })
    trainer = build_trainer(config)
    trainer.fit(progress=False)
    path = tmp_path / "last.safetensors"
    ckpt = load_checkpoint(path)
    assert set(ckpt.extra["experiment"]) == {"task", "eval"}  # model/train: their own fields
    assert experiment_from_checkpoint(ckpt) == config
    # The format-1 layout repeated the model and train configs inside extra["experiment"].
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    extra = json.loads(metadata["extra"])
    extra["experiment"] = config.to_dict()
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata={**metadata, "format_version": "1",
                                           "extra": json.dumps(extra)})
    assert experiment_from_checkpoint(load_checkpoint(old)) == config


def test_a_stored_config_is_checked_as_strictly_as_yaml(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "c.safetensors", model)
    with edited_checkpoint(path) as (metadata, tensors):
        config = json.loads(metadata["model_config"])
        config["num_heads"] = "4"  # a string where an int belongs
        metadata["model_config"] = json.dumps(config)
    with pytest.raises(ValueError, match="num_heads: expected int"):
        load_model(path)



def test_a_file_written_by_a_function_is_atomic_too(tmp_path):
    from bsatnp.io.files import write_atomic

    path = tmp_path / "out.nc"
    write_atomic(path, b"old")

    def half_then_crash(at):
        at.write_bytes(b"half a netCDF")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="cannot write .*out.nc.*previous file is kept"):
        write_atomic(path, half_then_crash)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.nc"]
    write_atomic(path, lambda at: at.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.nc"]


def test_provenance_is_read_typed_from_fixed_keys(tmp_path):
    from bsatnp.io.checkpoint import Provenance

    model = BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                   head_hidden=(8,))
    record = Provenance(experiment={"task": {"name": "gp2d"}}, init="gp2d",
                        predictor={"card": {"summary": "x"}})
    path = save_checkpoint(tmp_path / "p.safetensors", model,
                           extra={**record.to_extra(), "other": 1})  # other keys: their writers'
    assert load_checkpoint(path).provenance == record
    assert Provenance.read(None, path) == Provenance() and Provenance().to_extra() == {}
    for key, bad in (("experiment", [1]), ("init", 3), ("predictor", "card")):
        damaged = save_checkpoint(tmp_path / f"{key}.safetensors", model, extra={key: bad})
        with pytest.raises(ValueError, match=f"{key}.safetensors: the stored {key} record"):
            Provenance.read(load_checkpoint(damaged).extra, damaged)
