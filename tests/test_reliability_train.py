"""Reliability of training and its files: divergence, run directories, temp files, checkpoints.

Each test here failed before the fix it covers: NaN training steps were applied and saved,
a NaN validation NLL became an unbeatable best, a fresh run truncated an existing run's
log, killed saves left temp files forever, a damaged config allocated a huge model before
its weights were compared, damaged checkpoint fields loaded (or failed with a
RecursionError / RuntimeError / at the first step), and damaged score-cache rows raised a
KeyError.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import time

import pytest
import torch
from conftest import dead_pid, edited_checkpoint

import bsatnp.train.trainer as trainer_module
from bsatnp import Batch
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig
from bsatnp.experiment_trainer import build_trainer
from bsatnp.io.checkpoint import load_checkpoint, load_model, save_checkpoint
from bsatnp.models import BSATNP
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.train.config import TrainConfig
from bsatnp.train.trainer import Trainer, TrainingDivergedError

TINY = dict(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,), head_hidden=(32,))


def tiny_model(seed: int = 0) -> BSATNP:
    torch.manual_seed(seed)
    return BSATNP(**TINY)


def sample_batch(generator: torch.Generator) -> Batch:
    s_ctx = torch.rand(2, 10, 2, generator=generator)
    s_test = torch.rand(2, 6, 2, generator=generator)
    return Batch(s_ctx=s_ctx, f_ctx=torch.sin(3 * s_ctx.sum(-1, keepdim=True)), s_test=s_test,
                 f_test=torch.sin(3 * s_test.sum(-1, keepdim=True)))


def config(tmp_path, **overrides) -> TrainConfig:
    base = dict(steps=20, lr=1e-3, final_lr_factor=0.1, val_every=100, save_every=100,
                log_every=1, out_dir=str(tmp_path))
    return TrainConfig(**{**base, **overrides})


def records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


@pytest.fixture
def nan_loss_from(monkeypatch):
    """``nan_loss_from(trainer, k)``: the training loss is NaN at steps >= k (1-based)."""
    real = trainer_module.masked_nll

    def install(trainer: Trainer, first_bad: int) -> None:
        def loss(*args):
            value = real(*args)
            return value * math.nan if trainer.step + 1 >= first_bad else value

        monkeypatch.setattr(trainer_module, "masked_nll", loss)

    return install



# ------------------------------------------------------------ 1. training guards itself
def test_nan_loss_from_step_2_stops_with_a_clear_error_and_saves_no_nan_weights(
        tmp_path, nan_loss_from):
    def validate(model):
        return {"nll": 1.0}

    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, save_every=1, val_every=1),
                      validate)
    nan_loss_from(trainer, 2)
    with pytest.raises(TrainingDivergedError,  # after 10 in a row, the default
                       match=r"training diverged: non-finite loss at steps 2, 3, 4, \.\.\., 10, "
                             r"11 \(10 in a row.*lower the learning rate"):
        trainer.fit(progress=False)
    assert trainer.step == 11
    last, best = load_checkpoint(tmp_path / "last.safetensors"), load_checkpoint(
        tmp_path / "best.safetensors")
    assert all_finite(last.model_state) and all_finite(best.model_state)
    assert last.step == 10  # the diverging step saves nothing
    assert [r["skipped"] for r in records(tmp_path)] == [0] + [1] * 10
    first = load_model(tmp_path / "best.safetensors")  # step 1: the only update
    for a, b in zip(first.state_dict().values(), trainer.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)  # the skipped steps left the weights alone


def test_a_non_finite_gradient_skips_the_update_but_advances_the_schedule(tmp_path,
                                                                         monkeypatch):
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, steps=6))
    trainer.fit(steps=2, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *args, **kwargs: real(*args, **kwargs) * math.inf)
    trainer.fit(steps=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.step == trainer.scheduler.last_epoch == 4
    assert [bad for _, bad in trainer.bad_steps] == ["grad_norm", "grad_norm"]
    monkeypatch.undo()
    trainer.fit(progress=False)
    assert trainer.bad_steps == [] and trainer.step == 6
    assert [r["skipped"] for r in records(tmp_path)] == [0, 0, 1, 1, 0, 0]
    assert not all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_divergence_stops_at_the_same_step_after_a_resume(tmp_path, nan_loss_from):
    straight = Trainer(tiny_model(), sample_batch,
                       config(tmp_path / "a", save_every=1, max_bad_steps=4))
    nan_loss_from(straight, 3)
    with pytest.raises(TrainingDivergedError, match="steps 3, 4, 5, 6 "):
        straight.fit(progress=False)
    assert straight.step == 6

    first = Trainer(tiny_model(), sample_batch, config(tmp_path / "b", save_every=1,
                                                       max_bad_steps=4))
    nan_loss_from(first, 3)
    first.fit(steps=5, progress=False)  # killed after saving step 5, in the middle of a streak
    resumed = Trainer.from_checkpoint(tmp_path / "b" / "last.safetensors", sample_batch)
    assert [step for step, _ in resumed.bad_steps] == [3, 4, 5]
    nan_loss_from(resumed, 3)
    with pytest.raises(TrainingDivergedError, match="steps 3, 4, 5, 6 "):
        resumed.fit(progress=False)
    assert resumed.step == 6


def test_a_nan_validation_nll_never_becomes_the_best(tmp_path):
    scripted = iter([math.nan, 2.0, math.nan, 3.0])
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, steps=8, val_every=2),
                      lambda model: {"nll": next(scripted)})
    trainer.fit(progress=False)
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert (best.step, best.best_metric, trainer.best_metric) == (4, 2.0, 2.0)


def test_a_stored_nan_best_reads_as_none_on_resume(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, steps=4, val_every=2))
    trainer.fit(steps=2, progress=False)
    trainer.best_metric = math.nan  # as older versions stored after a NaN validation
    trainer.save(tmp_path / "last.safetensors")
    resumed = Trainer.from_checkpoint(tmp_path / "last.safetensors", sample_batch,
                                      lambda model: {"nll": 5.0})
    assert resumed.best_metric is None
    resumed.fit(progress=False)
    assert resumed.best_metric == 5.0
    assert load_checkpoint(tmp_path / "best.safetensors").best_metric == 5.0


def test_non_finite_weights_are_never_saved(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path))
    path = trainer.save(tmp_path / "last.safetensors")
    before = path.read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = math.nan
    with pytest.raises(ValueError, match="refusing to save .*last.safetensors.*NaN or infinite"):
        trainer.save(path)
    assert path.read_bytes() == before


def test_max_bad_steps_must_be_positive():
    assert TrainConfig().max_bad_steps == 10
    with pytest.raises(ValueError, match="max_bad_steps"):
        TrainConfig(max_bad_steps=0)


# ------------------------------------------------- 2. an existing run is never overwritten
def tiny_experiment(out_dir) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        "task": {"name": "gp2d", "batch_size": 2, "n_ctx": 12, "n_test": 8, "min_ctx": 3,
                 "max_ctx": 11},
        "train": {"steps": 2, "batch_size": 2, "val_batches": 1, "out_dir": str(out_dir)},
    })


def test_a_fresh_run_refuses_a_directory_that_holds_a_run(tmp_path):
    run = tmp_path / "run"
    experiment = tiny_experiment(run)
    build_trainer(experiment).fit(steps=1, progress=False)
    log = (run / "log.jsonl").read_text()
    for kwargs in ({}, {"out_dir": run}):
        with pytest.raises(ValueError, match=rf"{re.escape(str(run))} already holds.*--resume "
                                             rf"{re.escape(str(run / 'last.safetensors'))}"
                                             r".*--out"):
            build_trainer(experiment, **kwargs)
    (run / "last.safetensors").unlink()  # a log alone is a run too
    with pytest.raises(ValueError, match="already holds a training run \\(log.jsonl\\)"):
        build_trainer(experiment)
    other = tmp_path / "other"
    build_trainer(experiment, out_dir=other).fit(steps=1, progress=False)
    with pytest.raises(ValueError, match=f"{re.escape(str(run))} .*resuming"):  # not its own
        build_trainer(experiment, resume=other / "last.safetensors", out_dir=run)
    assert (run / "log.jsonl").read_text() == log
    resumed = build_trainer(experiment, resume=other / "last.safetensors", out_dir=other)
    resumed.fit(progress=False)
    assert resumed.step == 2
    fresh = build_trainer(experiment, overwrite=True)
    fresh.fit(progress=False)
    assert [r["step"] for r in records(run)] == [2]  # the old record went


# ------------------------------------------------------------- 3. stale temp files
def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    model = tiny_model()
    gone, live = dead_pid(), os.getppid()  # a killed writer; a running one (our parent)
    orphan = tmp_path / f".last.safetensors.{gone}.ab_cd123.tmp"  # write_atomic's pattern
    orphan.write_bytes(b"half a checkpoint")
    keep = [tmp_path / f".best.safetensors.{gone}.ab_cd123.tmp",  # another target's
            tmp_path / f".last.safetensors.{live}.ab_cd123.tmp",  # a live writer's
            tmp_path / ".last.safetensors.tmp",  # not the pattern
            tmp_path / f"last.safetensors.{gone}.ab_cd123.tmp"]
    for path in keep:
        path.write_bytes(b"x")
    past = time.time() - 60
    for path in (orphan, *keep):
        os.utime(path, (past, past))
    save_checkpoint(tmp_path / "last.safetensors", model, step=3)
    assert not orphan.exists()
    assert all(path.exists() for path in keep)
    assert load_checkpoint(tmp_path / "last.safetensors").step == 3


# ---------------------------------------- 4. config checked against tensor shapes first
@contextlib.contextmanager
def address_space_limit(extra_bytes: int):
    """Cap this process's address space at its current size + ``extra_bytes`` (Linux).

    Without the shape check the huge model below would be allocated; the cap turns that
    into a quick allocation error instead of exhausting the machine's memory.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    limit = size + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_huge_stored_config_with_small_tensors_fails_fast_without_allocating(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model())
    with edited_checkpoint(path) as (metadata, _):
        model_config = json.loads(metadata["model_config"])
        model_config.update(dim=100_000, ffn_dim=100_000)  # 40 GB per feed-forward layer
        metadata["model_config"] = json.dumps(model_config)
    ckpt = load_checkpoint(path)
    start = time.perf_counter()
    with address_space_limit(2 << 30), pytest.raises(
            ValueError, match=r"c.safetensors: the saved model state does not fit the saved "
                              r"model config: tensor '[\w.]+' has shape \(\d+(, \d+)*\) in the "
                              r"file, but the config makes .*100000"):
        ckpt.build_model()
    assert time.perf_counter() - start < 5


def test_every_family_builds_on_the_meta_device_with_the_real_shapes():
    from bsatnp.models.registry import FAMILIES, build_model

    for name, family in FAMILIES.items():  # else build_model loses its allocation guard
        with torch.device("meta"):
            skeleton = build_model(family.config())
        real = build_model(family.config())
        assert {k: v.shape for k, v in skeleton.state_dict().items()} == {
            k: v.shape for k, v in real.state_dict().items()}, name


def test_stored_tensors_the_config_does_not_make_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model())
    with edited_checkpoint(path) as (_, tensors):
        tensors["model/extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="does not make: \\['extra.weight'\\]"):
        load_model(path)


# -------------------------------------------------- 5. checkpoint fields, one error each
def trainer_checkpoint(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, steps=4))
    trainer.fit(steps=2, progress=False)
    return tmp_path / "last.safetensors"


def _step(value):
    def damage(metadata, tensors):
        metadata["step"] = json.dumps(value)
    return damage


def _rng(metadata, tensors):
    tensors["rng/data"] = torch.zeros(10, dtype=torch.uint8)


def _optimizer_shapes(metadata, tensors):
    key = next(k for k in tensors if k.endswith("/exp_avg") and tensors[k].dim() == 2)
    tensors[key] = tensors[key].T.contiguous() if tensors[key].shape[0] != tensors[
        key].shape[1] else tensors[key][:, :-1].contiguous()


def _nested(metadata, tensors):
    metadata["extra"] = "[" * 10_000 + "]" * 10_000


def _extra_list(metadata, tensors):
    metadata["extra"] = "[1, 2, 3]"  # before: AttributeError in Predictor.load / bsatnp info


def _scheduler_step(metadata, tensors):
    scheduler = json.loads(metadata["scheduler"])
    scheduler["last_epoch"] = 7
    metadata["scheduler"] = json.dumps(scheduler)


@pytest.mark.parametrize(("damage", "message"), [
    (_step(3.7), "'step' must be a non-negative integer, got 3.7"),
    (_step(-5), "'step' must be a non-negative integer, got -5"),
    (_rng, r"rng\['data'\] is not a valid torch generator state"),
    (_optimizer_shapes, r"optimizer state does not fit: 'exp_avg' of parameter \d+ has shape"),
    (_nested, "'extra' is damaged: its JSON is nested too deeply"),
    (_extra_list, "'extra' must be a mapping, got list"),
    (_scheduler_step, "scheduler is at step 7 but the checkpoint at step 2"),
])
def test_a_damaged_checkpoint_field_is_one_clear_value_error(tmp_path, damage, message):
    path = trainer_checkpoint(tmp_path)
    with edited_checkpoint(path) as (metadata, tensors):
        damage(metadata, tensors)
    with pytest.raises(ValueError, match=f"last.safetensors: .*{message}"):
        Trainer.from_checkpoint(path, sample_batch)


def test_a_non_uint8_rng_state_is_refused_at_load(tmp_path):
    path = trainer_checkpoint(tmp_path)
    with edited_checkpoint(path) as (_, tensors):
        tensors["rng/torch"] = tensors["rng/torch"].float()
    with pytest.raises(ValueError, match=r"rng\['torch'\] is not an RNG state"):
        load_checkpoint(path)


# ------------------------------------------------------ 6. evaluation-cache rows
TASK = GP2DTask(batch_size=2, n_ctx=16, n_test=24, min_ctx=4, max_ctx=15)


class CountingModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model()
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        return self.inner.predict(batch)


def _drop_scores(row):
    return {"index": row["index"]}


def _no_model(row):
    return {**row, "scores": {"oracle": row["scores"]["model"]}}


def _missing_metric(row):
    return {**row, "scores": {**row["scores"], "model": {"nll": 1.0}}}


def _no_nll(row):
    return {**row, "scores": {"model": {k: v for k, v in row["scores"]["model"].items()
                                        if k != "nll"}}}


def _string_index(row):
    return {**row, "index": "1"}


@pytest.mark.parametrize(("damage", "message"), [
    (_drop_scores, r"expected the keys \['index', 'scores'\], got \['index'\]"),
    (_no_model, r"'scores' must hold \['model'\], got \['oracle'\]"),
    (_missing_metric, r"scores of 'model' have the metrics \['nll'\], earlier rows"),
    (_string_index, "'index' must be a non-negative integer"),
    (None, "not JSON"),
    (_no_nll, r"scores of 'model' have no 'nll'"),  # before: a KeyError later
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # before: a RecursionError
])
def test_a_damaged_cache_row_names_the_file_and_line(tmp_path, damage, message):
    evaluate(CountingModel(), ("in_domain",), 3, seed=5, progress=False, task=TASK,
             cache_dir=tmp_path)
    path = tmp_path / "in_domain" / "model.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = ("{oops" if damage is None else damage if isinstance(damage, str)
                else json.dumps(damage(json.loads(lines[2]))))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"in_domain[/\\\\]model\.jsonl, line 3: damaged score "
                                         rf"cache row \({message}"):
        evaluate(CountingModel(), ("in_domain",), 3, seed=5, progress=False, task=TASK,
                 cache_dir=tmp_path)


def test_cli_train_refuses_an_existing_run_unless_resumed_or_overwritten(tmp_path, capsys):
    from bsatnp import cli

    (tmp_path / "tiny.yaml").write_text(
        "model: {dim: 8, num_blocks: 1, num_heads: 2, qkv_dim: 8, ffn_dim: 8, "
        "embed_hidden: [8], head_hidden: [8]}\n"
        "task: {batch_size: 2, n_ctx: 8, n_test: 8, min_ctx: 2, max_ctx: 7}\n"
        "train: {steps: 2, batch_size: 2, val_every: 2, val_batches: 1, save_every: 1}\n"
        "eval: {n_batches: 1}\n")
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
            "--quiet"]
    assert cli.main(args) == 0
    before = (tmp_path / "run" / "log.jsonl").read_text()
    assert cli.main(args) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (tmp_path / "run" / "log.jsonl").read_text() == before  # nothing lost
    assert cli.main([*args, "--overwrite"]) == 0


def test_sigkill_inside_a_save_then_resume_is_exact_and_leaves_no_orphan(tmp_path):
    """Fault injection: a real SIGKILL between writing a checkpoint's temp file and the rename."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    (tmp_path / "tiny.yaml").write_text(
        "model: {dim: 8, num_blocks: 1, num_heads: 2, qkv_dim: 8, ffn_dim: 8, "
        "embed_hidden: [8], head_hidden: [8]}\n"
        "task: {batch_size: 2, n_ctx: 8, n_test: 8, min_ctx: 2, max_ctx: 7}\n"
        "train: {steps: 6, batch_size: 2, val_every: 3, val_batches: 1, save_every: 1}\n"
        "eval: {n_batches: 1}\n")
    train = ["train", "--config", str(tmp_path / "tiny.yaml"), "--quiet"]
    child = (
        "import os, signal, sys\n"
        "real, calls = os.replace, [0]\n"
        "def replace(src, dst):\n"
        "    calls[0] += 1\n"
        "    if str(dst).endswith('last.safetensors') and calls[0] >= int(sys.argv[1]):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # temp file written, rename pending\n"
        "    return real(src, dst)\n"
        "os.replace = replace\n"
        "from bsatnp import cli\n"
        "sys.exit(cli.main(sys.argv[2:]))\n")
    killed = subprocess.run([sys.executable, "-c", child, "5", *train, "--out",
                             str(tmp_path / "killed")], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    run = tmp_path / "killed"
    orphans = [n for n in os.listdir(run) if n.endswith(".tmp")]
    assert orphans  # the kill left the temp file of the interrupted save
    step_before = load_checkpoint(run / "last.safetensors").step  # previous file intact
    assert 0 < step_before < 6
    from bsatnp import cli

    assert cli.main([*train, "--resume", str(run / "last.safetensors")]) == 0
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]  # removed by the next save
    assert cli.main([*train, "--out", str(tmp_path / "straight")]) == 0
    resumed = load_file(run / "last.safetensors")
    straight = load_file(tmp_path / "straight" / "last.safetensors")
    for key in straight:
        if key.startswith("model/"):
            assert torch.equal(resumed[key], straight[key]), key
