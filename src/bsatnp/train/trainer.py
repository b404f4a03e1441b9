"""The training loop: AdamW, clipping, cosine decay, logging, validation, exact resume."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from bsatnp.batch import Batch
from bsatnp.io.checkpoint import load_checkpoint, save_checkpoint
from bsatnp.io.files import complete_lines, write_atomic
from bsatnp.loss import masked_nll
from bsatnp.precision import training_precision
from bsatnp.progress import tqdm_class
from bsatnp.train import run_dir
from bsatnp.train.config import TrainConfig
from bsatnp.train.distributed import Replicas
from bsatnp.train.schedule import cosine_schedule

SampleBatch = Callable[[torch.Generator], Batch]
Validate = Callable[[nn.Module], dict[str, float]]
_SCHEDULER_FIRST_WARNING = "Detected call of `lr_scheduler.step()` before `optimizer.step()`"


class TrainingDivergedError(ValueError):
    """Training produced too many consecutive steps with a non-finite loss or gradient norm.

    A ``ValueError`` so that the command line reports it as one line, like bad input.
    """


class Trainer:
    """Trains a model of any family on fresh batches drawn every step (SPEC §7).

    Training batches come from ``sample_batch(generator)`` with a dedicated CPU generator
    seeded from ``config.seed``; its state and the global torch RNG state are saved in every
    checkpoint, so :meth:`from_checkpoint` continues bit for bit where the run stopped.

    Files in ``config.out_dir``: ``log.jsonl`` (one JSON record per line),
    ``last.safetensors`` (every ``save_every`` steps and at the end of :meth:`fit`) and
    ``best.safetensors`` (lowest validation NLL so far). The log describes the run whose
    state the trainer holds: :meth:`fit` first drops records past the current step, which a
    run killed between two checkpoints left behind and which are about to be retrained.

    Non-finite steps: a step whose loss or pre-clip gradient norm is NaN or infinite is
    skipped: the parameters and the optimizer state are left untouched. It still counts as a
    step: its batch is consumed and the step counter and the learning-rate schedule advance
    (``scheduler.last_epoch == step`` always holds, the step number keeps meaning "batches
    drawn" and the schedule stays a function of the step alone), so a checkpoint's step,
    scheduler and RNG states stay consistent and a resume is as exact as before. The log
    record counts the skipped steps since the previous record (``"skipped"``) and averages
    ``loss`` and ``grad_norm`` over the other steps only (NaN if all were skipped). After
    ``config.max_bad_steps`` consecutive skipped steps :meth:`fit` writes its log record and
    raises :class:`TrainingDivergedError` without saving; the current streak is stored in
    every checkpoint, so a resumed run stops at the same step as an uninterrupted one.
    Checking finiteness costs one host-device synchronisation per step.

    Non-finite weights are never saved (:meth:`save` refuses them) and a non-finite
    validation NLL never becomes the best: it ranks below every finite one.

    Early stopping (``config.early_stop_patience``): a validation that does not set a new
    best NLL (strictly lower) counts as stale; after that many stale validations in a row
    :meth:`fit` ends as at its last step: the record of that step says why (``"stopped"``)
    and ``last.safetensors`` is written. The count and the reason are stored in every
    checkpoint, so a resumed run stops at the same step as an uninterrupted one, and a
    stopped run stays stopped: :meth:`fit` then trains no step and warns instead.

    Args:
        model: The model to train (on any device; batches are moved to it).
        sample_batch: Draws one training batch from the given generator; must set ``f_test``.
        config: Training settings.
        validate: Returns metrics of the model, including ``"nll"``; called every
            ``val_every`` steps in eval mode without gradients. To keep resumes exact it
            should draw its data from its own generator, not the global RNG.
        extra: Free-form dict stored in every checkpoint (task config, normaliser, ...).
        replicas: This process's rank among data-parallel processes (``torchrun``; see
            :mod:`bsatnp.train.distributed`), or ``None`` for one process. Each rank trains
            on its slice of the global batch and only rank 0 writes files.

    Raises:
        ValueError: If ``config.early_stop_patience`` is set without ``validate``.
    """

    def __init__(
        self,
        model: nn.Module,
        sample_batch: SampleBatch,
        config: TrainConfig,
        validate: Validate | None = None,
        extra: dict[str, Any] | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        if config.early_stop_patience is not None and validate is None:
            raise ValueError("TrainConfig.early_stop_patience needs a validate function "
                             "(early stopping watches the validation NLL)")
        self.model = model
        self.replicas = replicas
        self.step_model = model if replicas is None else nn.parallel.DistributedDataParallel(model)
        self.sample_batch = sample_batch
        self.config = config
        self.validate = validate
        self.extra = extra
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.betas,
            weight_decay=config.weight_decay,
        )
        self.scheduler = cosine_schedule(self.optimizer, config.steps, config.final_lr_factor,
                                         config.warmup_steps)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.best_metric: float | None = None
        self.bad_steps: list[tuple[int, str]] = []
        """The current run of consecutive skipped steps: ``(step, "loss" or "grad_norm")``."""
        self.stale_validations = 0
        """Validations in a row since the last new best validation NLL."""
        self.stopped: str | None = None
        """Why the run stopped early (``config.early_stop_patience``), or ``None``."""
        self.out_dir = Path(config.out_dir)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        sample_batch: SampleBatch,
        validate: Validate | None = None,
        map_location: str | torch.device = "cpu",
        replicas: Replicas | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        extra: Callable[[dict[str, Any] | None], dict[str, Any] | None] | None = None,
    ) -> Trainer:
        """Rebuild model, optimizer, scheduler, step, best NLL and RNG states from ``path``.

        The global torch RNG state is restored too, so call this right before :meth:`fit`.
        ``out_dir`` moves the run's outputs (default: where it wrote before); ``extra``
        maps the ``extra`` record ``path`` holds to what the resumed run's checkpoints
        record (default: the same).

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a checkpoint written by a :class:`Trainer`, or one
                of its parts is damaged (the message names it: ``rng``, the optimizer state,
                the scheduler, ...); everything is checked before training can start.
        """
        ckpt = load_checkpoint(path)
        if ckpt.train_config is None or not {"torch", "data"} <= set(ckpt.rng):
            raise ValueError(f"{path} was not written by a Trainer (no train config or RNG state)")
        for name in ("torch", "data"):
            try:
                torch.Generator().set_state(ckpt.rng[name])
            except (RuntimeError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: rng[{name!r}] is not a valid torch generator state "
                                 f"({ckpt.rng[name].numel()} bytes): {err}") from err
        try:
            config = TrainConfig.from_dict(ckpt.train_config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: the saved train config is invalid: {err}") from err
        if out_dir is not None:
            config = replace(config, out_dir=str(out_dir))
        sched = ckpt.scheduler_state
        sched_step = sched.get("last_epoch") if isinstance(sched, dict) else None
        if sched_step is not None and sched_step != ckpt.step:  # they advance together
            raise ValueError(f"{path}: the saved scheduler is at step {sched_step!r} but the "
                             f"checkpoint at step {ckpt.step}")
        bad_steps = _bad_steps(path, ckpt.trainer_state)
        stale, stopped = _early_stop_state(path, ckpt.trainer_state)
        trainer = cls(ckpt.build_model().to(map_location), sample_batch, config, validate,
                      ckpt.extra if extra is None else extra(ckpt.extra), replicas)
        ckpt.restore(trainer.optimizer, "optimizer")
        ckpt.restore(trainer.scheduler, "scheduler")
        trainer.step = ckpt.step
        best = ckpt.best_metric
        trainer.best_metric = best if best is not None and math.isfinite(best) else None
        trainer.bad_steps = bad_steps
        trainer.stale_validations, trainer.stopped = stale, stopped
        trainer.generator.set_state(ckpt.rng["data"])
        torch.set_rng_state(ckpt.rng["torch"])
        return trainer

    def fit(
        self, steps: int | None = None, progress: bool = True, max_seconds: float | None = None
    ) -> None:
        """Train until ``config.steps`` steps in total, or for ``steps`` more steps.

        A run that stopped early (:attr:`stopped`; ``config.early_stop_patience``) trains no
        further: the call warns and returns.

        Args:
            steps: Steps to take now (default: the rest of ``config.steps``).
            progress: Show a tqdm bar with the loss and steps/s.
            max_seconds: Wall-clock budget: stop after the first step that ends past it
                (logging and saving ``last.safetensors`` as at the target step).

        Raises:
            TrainingDivergedError: After ``config.max_bad_steps`` consecutive steps with a
                non-finite loss or gradient norm (see the class docstring).
            ValueError: If a checkpoint would hold non-finite weights, or another process
                holds the run directory (:func:`bsatnp.train.run_dir.claim`).
        """
        if self.stopped is not None:
            warnings.warn(f"{self.out_dir}: not training: the run stopped early at step "
                          f"{self.step} ({self.stopped})", stacklevel=2)
            return
        target = self.config.steps if steps is None else self.step + steps
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        main = self.replicas is None or self.replicas.is_main
        if not main:
            self._fit(target, deadline, progress, main)
            return
        run_dir.claim(self.out_dir)  # one process per run directory
        try:
            self._drop_log_records_after(self.step)
            self._fit(target, deadline, progress, main)
        finally:
            run_dir.release(self.out_dir, every_claim=True)

    def _fit(self, target: int, deadline: float | None, progress: bool, main: bool) -> None:
        """The loop of :meth:`fit` (the run directory claimed when ``main``)."""
        tqdm = tqdm_class()
        losses: list[Tensor] = []
        norms: list[Tensor] = []
        skipped = 0
        self.model.train()
        with (
            (open(self.out_dir / "log.jsonl", "a", encoding="utf-8") if main  # noqa: SIM115
             else contextlib.nullcontext(io.StringIO())) as log,
            tqdm(total=target, initial=self.step, unit="step",
                 disable=not (progress and main)) as bar,
        ):
            if self.step == 0 and self.config.validate_start:
                start = self._validate()
                if start is not None:
                    self._record(log, [], [], self.optimizer.param_groups[0]["lr"], start)
            while self.step < target:
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm, bad = self._train_step()
                if bad is None:
                    losses.append(loss)
                    norms.append(grad_norm)
                    self.bad_steps = []
                else:
                    skipped += 1
                    self.bad_steps.append((self.step, bad))
                diverged = len(self.bad_steps) >= self.config.max_bad_steps
                bar.update(1)
                metrics = self._validate() if self._due(self.config.val_every) else None
                if metrics is not None:
                    self.stopped = self._early_stop_reason()
                last = diverged or self.stopped is not None or self.step == target or (
                    deadline is not None and time.monotonic() >= deadline
                )
                if metrics is not None or self._due(self.config.log_every) or last:
                    record = self._record(log, losses, norms, lr, metrics, skipped,
                                          self.stopped)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    losses, norms, skipped = [], [], 0
                if diverged:
                    raise TrainingDivergedError(self._divergence_message())
                if self._due(self.config.save_every) or last:
                    self.save(self.out_dir / "last.safetensors")
                if last:
                    break
        if self.replicas is not None:  # the files are complete before any rank returns
            torch.distributed.barrier()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint of the full training state to ``path`` (atomically).

        Raises:
            ValueError: If a weight of the model is NaN or infinite (nothing is written, the
                previous file at ``path`` is kept).
        """
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"refusing to save {path}: the model's {name!r} holds NaN or infinite "
                    f"values at step {self.step} (training diverged; lower the learning rate "
                    "or check the data); the previous checkpoint is kept"
                )
        if self.replicas is not None and not self.replicas.is_main:
            return Path(path)  # rank 0 writes; every rank holds the same state
        return save_checkpoint(
            path, self.model, self.optimizer, self.scheduler, step=self.step,
            rng={"torch": torch.get_rng_state(), "data": self.generator.get_state()},
            train_config=self.config.to_dict(), extra=self.extra, best_metric=self.best_metric,
            trainer_state={"bad_steps": [list(bad) for bad in self.bad_steps],
                           "stale_validations": self.stale_validations,
                           "stopped": self.stopped},
        )

    def _train_step(self) -> tuple[Tensor, Tensor, str | None]:
        """One step on a fresh batch: the loss, the pre-clip grad norm and what was bad.

        The third value is ``None`` after an optimiser step, or ``"loss"``/``"grad_norm"``
        when that was not finite and the update was skipped (the scheduler still advances).
        """
        device = next(self.model.parameters()).device
        batch = self.sample_batch(self.generator)
        if batch.f_test is None:
            raise ValueError("sample_batch must return batches with f_test (training targets)")
        replicas = self.replicas
        if replicas is not None:
            batch = replicas.shard(batch)
        batch = batch.to(device)
        mask = batch.test_mask()
        with training_precision(self.config.precision, device):
            predictive = self.step_model(batch)
        loss = masked_nll(predictive, batch.f_test, mask)
        if replicas is not None:  # each slice's share of the NLL over the global batch
            count = mask.sum().to(loss.dtype)
            loss = loss * count * replicas.world_size / replicas.total(count)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        if replicas is not None:  # the global NLL, and skip only if every rank can step
            loss = replicas.total(loss.detach()) / replicas.world_size
        finite = torch.stack([torch.isfinite(loss.detach()), torch.isfinite(grad_norm)])
        loss_ok, norm_ok = finite.tolist()  # the one host sync of a step
        bad = None if loss_ok and norm_ok else "loss" if not loss_ok else "grad_norm"
        if bad is None:
            self.optimizer.step()
            self.scheduler.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # skipping the first step, torch would warn
                warnings.filterwarnings("ignore", re.escape(_SCHEDULER_FIRST_WARNING))
                self.scheduler.step()
        self.step += 1
        return loss.detach(), grad_norm.detach(), bad

    def _divergence_message(self) -> str:
        steps = [step for step, _ in self.bad_steps]
        kinds = sorted({kind.replace("_", " ") for _, kind in self.bad_steps})
        shown = ", ".join(map(str, steps)) if len(steps) <= 6 else (
            f"{', '.join(map(str, steps[:3]))}, ..., {', '.join(map(str, steps[-2:]))}")
        last = self.out_dir / "last.safetensors"
        kept = f"; {last} holds the last finite weights" if last.is_file() else ""
        return (
            f"training diverged: non-finite {' and '.join(kinds)} at steps {shown} "
            f"({len(steps)} in a row, TrainConfig.max_bad_steps={self.config.max_bad_steps}); "
            f"lower the learning rate (lr={self.config.lr:g}), tighten clip_norm "
            f"({self.config.clip_norm:g}) or check the training data for NaN/inf{kept}"
        )

    def _due(self, every: int) -> bool:
        return self.step % every == 0

    def _early_stop_reason(self) -> str | None:
        """Why to stop now (``config.early_stop_patience`` stale validations), or ``None``."""
        patience = self.config.early_stop_patience
        if patience is None or self.stale_validations < patience:
            return None
        best = ("no finite validation NLL yet" if self.best_metric is None
                else f"best validation NLL {self.best_metric:.6g}")
        return (f"early stop at step {self.step}: {self.stale_validations} validations "
                f"without a new best ({best}; TrainConfig.early_stop_patience={patience}); "
                "best.safetensors holds the best state")

    def _validate(self) -> dict[str, float] | None:
        """Run ``validate`` (if any) and write ``best.safetensors`` on a new best NLL."""
        if self.validate is None:
            return None
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.validate(self.model).items()}
        finally:
            self.model.train()
        if "nll" not in metrics:
            raise ValueError(f"validate must return an 'nll' metric, got {sorted(metrics)}")
        nll = metrics["nll"]  # a non-finite NLL is worse than any finite one: never the best
        # (every rank validates the same weights on the same batches, so all agree on it)
        if math.isfinite(nll) and (self.best_metric is None or nll < self.best_metric):
            self.best_metric = nll
            self.stale_validations = 0
            self.save(self.out_dir / "best.safetensors")
        else:
            self.stale_validations += 1
        return metrics

    def _drop_log_records_after(self, step: int) -> None:
        """Rewrite ``log.jsonl`` (atomically) without the records of steps after ``step``.

        A torn last line (a kill in the middle of a write) goes too.
        """
        path = self.out_dir / "log.jsonl"
        lines = complete_lines(path).splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if len(kept) < len(lines):
            write_atomic(path, "".join(kept).encode("utf-8"))

    def _record(self, log: TextIO, losses: list[Tensor], norms: list[Tensor], lr: float,
                metrics: dict[str, float] | None, skipped: int = 0,
                stopped: str | None = None) -> dict[str, Any]:
        """Append one JSON line: means over the steps since the last record, and metrics.

        The means are over the steps that updated the model (NaN if none did); ``skipped``
        counts the others; ``stopped`` (why training stops here) is added when given.
        """
        record: dict[str, Any] = {
            "step": self.step,
            "loss": torch.stack(losses).mean().item() if losses else math.nan,
            "lr": lr,
            "grad_norm": torch.stack(norms).mean().item() if norms else math.nan,
            "skipped": skipped,
            "time": time.time(),
        }
        record.update({f"val_{k}": v for k, v in (metrics or {}).items()})
        if stopped is not None:
            record["stopped"] = stopped
        log.write(json.dumps(record) + "\n")
        log.flush()
        return record


def _bad_steps(path: str | os.PathLike[str], state: dict[str, Any] | None) -> list[tuple[int, str]]:
    """The stored streak of skipped steps (``[]`` for files without a trainer state)."""
    raw = (state or {}).get("bad_steps", [])
    try:
        steps = [(step, kind) for step, kind in raw]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: the saved trainer state is damaged: {err}") from err
    if not all(isinstance(step, int) and kind in ("loss", "grad_norm") for step, kind in steps):
        raise ValueError(f"{path}: the saved trainer state is damaged: bad_steps={raw!r}")
    return steps


def _early_stop_state(path: str | os.PathLike[str], state: dict[str, Any] | None
                      ) -> tuple[int, str | None]:
    """The stored count of stale validations and why the run stopped early.

    ``(0, None)`` for files written before early stopping existed.
    """
    stale = (state or {}).get("stale_validations", 0)
    stopped = (state or {}).get("stopped")
    if isinstance(stale, bool) or not isinstance(stale, int) or stale < 0 or not (
            stopped is None or isinstance(stopped, str)):
        raise ValueError(f"{path}: the saved trainer state is damaged: "
                         f"stale_validations={stale!r}, stopped={stopped!r}")
    return stale, stopped
