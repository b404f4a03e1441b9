"""Training: schedule, config, loss goes down, best checkpoint, logging, exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bsatnp import Batch
from bsatnp.io.checkpoint import load_checkpoint, save_checkpoint
from bsatnp.loss import masked_nll
from bsatnp.models import BSATNP
from bsatnp.train.config import TrainConfig
from bsatnp.train.schedule import CosineDecay, cosine_schedule
from bsatnp.train.trainer import Trainer

TINY = dict(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,), head_hidden=(32,))


def tiny_model(seed: int = 0) -> BSATNP:
    torch.manual_seed(seed)
    return BSATNP(**TINY)


def sample_batch(generator: torch.Generator) -> Batch:
    """Small random batch: data from ``generator``, the test mask from the global RNG.

    Using the global RNG too makes the resume test sensitive to restoring it.
    """
    s_ctx = torch.rand(2, 10, 2, generator=generator)
    s_test = torch.rand(2, 6, 2, generator=generator)
    f_ctx = torch.sin(3 * s_ctx.sum(-1, keepdim=True))
    f_test = torch.sin(3 * s_test.sum(-1, keepdim=True))
    mask_test = torch.rand(2, 6) < 0.8
    mask_test[:, 0] = True
    return Batch(s_ctx=s_ctx, f_ctx=f_ctx, s_test=s_test, f_test=f_test, mask_test=mask_test)


def config(tmp_path, **overrides) -> TrainConfig:
    base = dict(steps=20, lr=1e-3, final_lr_factor=0.1, val_every=5, save_every=5, log_every=2,
                out_dir=str(tmp_path))
    return TrainConfig(**{**base, **overrides})


def fixed_val_batch_nll(model: BSATNP) -> dict[str, float]:
    batch = sample_batch_from_seed(123)
    return {"nll": masked_nll(model(batch), batch.f_test, batch.test_mask()).item()}


def sample_batch_from_seed(seed: int) -> Batch:
    state = torch.get_rng_state()
    batch = sample_batch(torch.Generator().manual_seed(seed))
    torch.set_rng_state(state)  # validation must not move the global RNG
    return batch


# ------------------------------------------------------------------------- schedule
def test_cosine_decay_values():
    decay = CosineDecay(100_000, 2e-5)
    assert decay(0) == 1.0
    assert decay(50_000) == pytest.approx(0.5 * (1 + 2e-5), rel=1e-12)
    assert decay(25_000) == pytest.approx(2e-5 + (1 - 2e-5) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert decay(100_000) == pytest.approx(2e-5, rel=1e-12)
    assert decay(200_000) == pytest.approx(2e-5, rel=1e-12)
    values = [decay(k) for k in range(0, 100_001, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_cosine_schedule_drives_optimizer_lr():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = cosine_schedule(optimizer, 10, 2e-5)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5] == pytest.approx(1e-4 * 0.5 * (1 + 2e-5))
    assert lrs[10] == pytest.approx(1e-4 * 2e-5)
    assert scheduler.state_dict()["lr_lambdas"] == [{"total_steps": 10, "final_factor": 2e-5,
                                                     "warmup_steps": 0}]


@pytest.mark.parametrize("args", [(0, 0.1), (10, -0.1), (10, 1.5)])
def test_cosine_decay_rejects_bad_args(args):
    with pytest.raises(ValueError):
        CosineDecay(*args)


# --------------------------------------------------------------------------- config
def test_train_config_defaults_and_round_trip():
    cfg = TrainConfig()
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.final_lr_factor) == (100_000, 8, 1e-4, 2e-5)
    assert (cfg.weight_decay, cfg.betas, cfg.clip_norm) == (1e-4, (0.9, 0.999), 0.5)
    data = json.loads(json.dumps(TrainConfig(steps=5, betas=(0.8, 0.99)).to_dict()))
    assert TrainConfig.from_dict(data) == TrainConfig(steps=5, betas=(0.8, 0.99))
    assert TrainConfig.from_dict({"lr": 3e-4}) == TrainConfig(lr=3e-4)


def test_train_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="TrainConfig: unknown key\\(s\\) \\['step'\\]"):
        TrainConfig.from_dict({"step": 10})
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_dict([("steps", 10)])
    for bad in ({"steps": 0}, {"lr": 0.0}, {"final_lr_factor": 2.0}, {"betas": (0.9,)},
                {"clip_norm": 0.0}, {"weight_decay": -1.0}, {"save_every": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


# -------------------------------------------------------------------------- trainer
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path):
    batch = sample_batch(torch.Generator().manual_seed(0))
    model = tiny_model()

    def loss() -> float:
        with torch.no_grad():
            return masked_nll(model(batch), batch.f_test, batch.test_mask()).item()

    before = loss()
    cfg = config(tmp_path, steps=30, lr=3e-3, final_lr_factor=1.0, clip_norm=10.0)
    Trainer(model, lambda g: batch, cfg).fit(progress=False)
    assert loss() < before - 0.1


def test_resume_is_bitwise_exact(tmp_path):
    straight = Trainer(tiny_model(), sample_batch, config(tmp_path / "a"), fixed_val_batch_nll)
    straight.fit(progress=False)

    first = Trainer(tiny_model(), sample_batch, config(tmp_path / "b"), fixed_val_batch_nll)
    first.fit(steps=10, progress=False)
    del first
    torch.manual_seed(999)  # a fresh process would have some other global RNG state
    torch.rand(1000)
    resumed = Trainer.from_checkpoint(tmp_path / "b" / "last.safetensors", sample_batch,
                                      fixed_val_batch_nll)
    assert resumed.step == 10
    resumed.fit(progress=False)

    assert resumed.step == straight.step == 20
    for (name, a), (_, b) in zip(straight.model.named_parameters(),
                                 resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert straight.best_metric == resumed.best_metric
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").step == 20


def test_resume_after_a_kill_drops_the_log_records_it_retrains(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, log_every=2, save_every=4))
    trainer.fit(steps=4, progress=False)
    at_step_4 = (tmp_path / "last.safetensors").read_bytes()
    trainer.fit(steps=2, progress=False)  # logs step 6 ...
    (tmp_path / "last.safetensors").write_bytes(at_step_4)  # ... and dies before saving it
    log = tmp_path / "log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4, 6]
    with log.open("a") as handle:
        handle.write('{"step": 8, "lo')  # torn by the kill

    resumed = Trainer.from_checkpoint(tmp_path / "last.safetensors", sample_batch)
    assert resumed.step == 4
    resumed.fit(progress=False)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(
        range(2, 21, 2))
    assert not (tmp_path / "log.jsonl.tmp").exists()


def test_best_checkpoint_tracks_lowest_validation_nll(tmp_path):
    scripted = iter([3.0, 1.0, 2.0, 1.5])

    def validate(model: BSATNP) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        return {"nll": next(scripted), "rmse": 0.5}

    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, steps=8, val_every=2),
                      validate, extra={"task": "toy"})
    trainer.fit(progress=False)
    assert trainer.model.training
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert (best.step, best.best_metric, best.extra) == (4, 1.0, {"task": "toy"})
    last = load_checkpoint(tmp_path / "last.safetensors")
    assert (last.step, last.best_metric) == (8, 1.0)

    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert [r["val_nll"] for r in records] == [3.0, 1.0, 2.0, 1.5]
    assert all({"loss", "lr", "grad_norm", "time", "val_rmse"} <= set(r) for r in records)


def test_validate_start_keeps_the_starting_weights_when_no_step_beats_them(tmp_path):
    scripted = iter([1.0, 2.0, 1.5, 3.0])  # step 0 (the start) is the best
    model = tiny_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, sample_batch,
                      config(tmp_path, steps=6, val_every=2, validate_start=True),
                      lambda m: {"nll": next(scripted)})
    trainer.fit(progress=False)
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert (best.step, best.best_metric) == (0, 1.0)
    assert all(torch.equal(best.model_state[k], start[k]) for k in start)
    assert not all(torch.equal(trainer.model.state_dict()[k], start[k]) for k in start)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_nll"]) for r in records] == [(0, 1.0), (2, 2.0), (4, 1.5),
                                                            (6, 3.0)]
    assert math.isnan(records[0]["loss"])


def test_best_state_is_the_minimum_of_a_scripted_validation_curve(tmp_path):
    """best.safetensors holds the weights of the validation with the lowest NLL: not the
    last one, not a later tie, never a NaN."""
    curve = [2.0, 1.5, math.nan, 0.7, 0.9, 0.7, 1.2, 0.8]  # the minimum at the 4th (step 4)
    seen: list[dict[str, torch.Tensor]] = []

    def validate(model: BSATNP) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"nll": curve[len(seen) - 1]}

    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, steps=8, val_every=1),
                      validate)
    trainer.fit(progress=False)
    assert len(seen) == len(curve) and trainer.best_metric == 0.7
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert (best.step, best.best_metric) == (4, 0.7)
    assert all(torch.equal(best.model_state[k], seen[3][k]) for k in seen[3])
    assert not all(torch.equal(best.model_state[k], seen[5][k]) for k in seen[5])
    assert load_checkpoint(tmp_path / "last.safetensors").step == 8


# Validation every 2 steps; the best is at step 8, then three validations without a new best
# (1.0 ties it, NaN never improves): with patience 3 the run stops at step 14.
EARLY_STOP_CURVE = {2: 3.0, 4: 2.0, 6: 2.5, 8: 1.0, 10: 1.5, 12: 1.0, 14: math.nan,
                    16: 0.5, 18: 0.4, 20: 0.3}


class ScriptedValidation:
    """Validation NLL of :data:`EARLY_STOP_CURVE` at the step of ``self.trainer``."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.steps: list[int] = []  # the steps validated

    def __call__(self, model: BSATNP) -> dict[str, float]:
        self.steps.append(self.trainer.step)
        return {"nll": EARLY_STOP_CURVE[self.trainer.step]}

    def attach(self, trainer: Trainer) -> Trainer:
        self.trainer = trainer
        return trainer


def early_stopping_trainer(out_dir, **overrides) -> tuple[Trainer, ScriptedValidation]:
    validate = ScriptedValidation()
    cfg = config(out_dir, **{"steps": 20, "val_every": 2, "save_every": 2,
                             "early_stop_patience": 3, **overrides})
    return validate.attach(Trainer(tiny_model(), sample_batch, cfg, validate)), validate


def resumed_trainer(path) -> tuple[Trainer, ScriptedValidation]:
    validate = ScriptedValidation()
    return validate.attach(Trainer.from_checkpoint(path, sample_batch, validate)), validate


def test_early_stopping_stops_where_the_scripted_curve_says(tmp_path):
    trainer, validate = early_stopping_trainer(tmp_path)
    trainer.fit(progress=False)
    assert trainer.step == 14 and validate.steps == [2, 4, 6, 8, 10, 12, 14]
    assert trainer.stopped is not None and "early_stop_patience=3" in trainer.stopped
    last = load_checkpoint(tmp_path / "last.safetensors")
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert (last.step, best.step, best.best_metric) == (14, 8, 1.0)
    assert last.trainer_state["stopped"] == trainer.stopped
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 14 and records[-1]["stopped"].startswith(
        "early stop at step 14: 3 validations without a new best (best validation NLL 1;")
    assert all("stopped" not in r for r in records[:-1])


def test_patience_one_more_runs_past_the_stale_stretch(tmp_path):
    trainer, validate = early_stopping_trainer(tmp_path, early_stop_patience=4)
    trainer.fit(progress=False)
    assert trainer.step == 20 and trainer.stopped is None and validate.steps[-1] == 20
    assert load_checkpoint(tmp_path / "best.safetensors").step == 20


def test_a_stopped_run_stays_stopped_on_resume(tmp_path):
    trainer, _ = early_stopping_trainer(tmp_path)
    trainer.fit(progress=False)
    log = (tmp_path / "log.jsonl").read_text()
    resumed, validate = resumed_trainer(tmp_path / "last.safetensors")
    assert resumed.stopped == trainer.stopped
    with pytest.warns(UserWarning, match="not training: the run stopped early at step 14"):
        resumed.fit(progress=False)
    with pytest.warns(UserWarning, match="stopped early"):
        resumed.fit(steps=4, progress=False)
    assert resumed.step == 14 and validate.steps == []
    assert (tmp_path / "log.jsonl").read_text() == log
    assert load_checkpoint(tmp_path / "last.safetensors").step == 14


def test_early_stopping_resumes_its_count_exactly(tmp_path):
    """Killed at step 12 (two stale validations so far), the resumed run stops at step 14
    too: the count is in the checkpoint."""
    first, _ = early_stopping_trainer(tmp_path)
    first.fit(steps=12, progress=False)
    assert (first.step, first.stale_validations, first.stopped) == (12, 2, None)
    resumed, validate = resumed_trainer(tmp_path / "last.safetensors")
    assert (resumed.step, resumed.stale_validations) == (12, 2)
    resumed.fit(progress=False)
    assert resumed.step == 14 and resumed.stopped is not None and validate.steps == [14]


def test_early_stop_patience_is_read_from_yaml_and_needs_validation(tmp_path):
    from bsatnp.experiment import load_experiment

    path = tmp_path / "run.yaml"
    assert load_experiment("gp2d").train.early_stop_patience is None
    path.write_text("train:\n  early_stop_patience: 3\n")
    assert load_experiment(path).train.early_stop_patience == 3
    for bad, message in (("'3'", "train.early_stop_patience: expected int, got '3'"),
                         ("2.5", "train.early_stop_patience: expected int"),
                         ("0", "early_stop_patience must be >= 1 or None, got 0")):
        path.write_text(f"train:\n  early_stop_patience: {bad}\n")
        with pytest.raises(ValueError, match=message):
            load_experiment(path)
    with pytest.raises(ValueError, match="early_stop_patience needs a validate function"):
        Trainer(tiny_model(), sample_batch, config(tmp_path, early_stop_patience=2))


def test_log_and_checkpoint_schedule(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch,
                      config(tmp_path, steps=7, log_every=3, save_every=100))
    trainer.fit(steps=4, progress=False)
    assert trainer.step == 4
    assert load_checkpoint(tmp_path / "last.safetensors").step == 4
    trainer.fit(progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 4, 6, 7]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    assert records[0]["lr"] > records[-1]["lr"]
    assert not (tmp_path / "best.safetensors").exists()
    assert load_checkpoint(tmp_path / "last.safetensors").step == 7


def test_wall_clock_budget_stops_early_and_saves(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch,
                      config(tmp_path, steps=50, log_every=100, save_every=100))
    trainer.fit(progress=False, max_seconds=0.0)  # budget spent: stop after the first step
    assert trainer.step == 1
    assert load_checkpoint(tmp_path / "last.safetensors").step == 1
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]


def test_validate_must_report_nll(tmp_path):
    trainer = Trainer(tiny_model(), sample_batch, config(tmp_path, val_every=1),
                      lambda model: {"rmse": 1.0})
    with pytest.raises(ValueError, match="'nll'"):
        trainer.fit(steps=1, progress=False)


def test_from_checkpoint_needs_a_trainer_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "weights.safetensors", tiny_model())
    with pytest.raises(ValueError, match="weights.safetensors.*not written by a Trainer"):
        Trainer.from_checkpoint(path, sample_batch)
