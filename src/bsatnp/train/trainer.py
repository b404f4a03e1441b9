"""The training loop: AdamW, clipping, cosine decay, logging, validation, exact resume."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from bsatnp.batch import Batch
from bsatnp.io.checkpoint import load_checkpoint, save_checkpoint
from bsatnp.io.files import complete_lines, write_atomic
from bsatnp.loss import masked_nll
from bsatnp.progress import tqdm_class
from bsatnp.train.config import TrainConfig
from bsatnp.train.schedule import cosine_schedule

SampleBatch = Callable[[torch.Generator], Batch]
Validate = Callable[[nn.Module], dict[str, float]]


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

    Args:
        model: The model to train (on any device; batches are moved to it).
        sample_batch: Draws one training batch from the given generator; must set ``f_test``.
        config: Training settings.
        validate: Returns metrics of the model, including ``"nll"``; called every
            ``val_every`` steps in eval mode without gradients. To keep resumes exact it
            should draw its data from its own generator, not the global RNG.
        extra: Free-form dict stored in every checkpoint (task config, normaliser, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        sample_batch: SampleBatch,
        config: TrainConfig,
        validate: Validate | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
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
        self.out_dir = Path(config.out_dir)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        sample_batch: SampleBatch,
        validate: Validate | None = None,
        map_location: str | torch.device = "cpu",
    ) -> Trainer:
        """Rebuild model, optimizer, scheduler, step, best NLL and RNG states from ``path``.

        The global torch RNG state is restored too, so call this right before :meth:`fit`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a checkpoint written by a :class:`Trainer`.
        """
        ckpt = load_checkpoint(path)
        if ckpt.train_config is None or not {"torch", "data"} <= set(ckpt.rng):
            raise ValueError(f"{path} was not written by a Trainer (no train config or RNG state)")
        try:
            config = TrainConfig.from_dict(ckpt.train_config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: the saved train config is invalid: {err}") from err
        trainer = cls(ckpt.build_model().to(map_location), sample_batch, config, validate,
                      ckpt.extra)
        ckpt.restore(trainer.optimizer, "optimizer")
        ckpt.restore(trainer.scheduler, "scheduler")
        trainer.step = ckpt.step
        trainer.best_metric = ckpt.best_metric
        trainer.generator.set_state(ckpt.rng["data"])
        torch.set_rng_state(ckpt.rng["torch"])
        return trainer

    def fit(
        self, steps: int | None = None, progress: bool = True, max_seconds: float | None = None
    ) -> None:
        """Train until ``config.steps`` steps in total, or for ``steps`` more steps.

        Args:
            steps: Steps to take now (default: the rest of ``config.steps``).
            progress: Show a tqdm bar with the loss and steps/s.
            max_seconds: Wall-clock budget: stop after the first step that ends past it
                (logging and saving ``last.safetensors`` as at the target step).
        """
        tqdm = tqdm_class()
        target = self.config.steps if steps is None else self.step + steps
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._drop_log_records_after(self.step)
        losses: list[Tensor] = []
        norms: list[Tensor] = []
        self.model.train()
        with (
            open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as log,
            tqdm(total=target, initial=self.step, unit="step", disable=not progress) as bar,
        ):
            while self.step < target:
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm = self._train_step()
                losses.append(loss)
                norms.append(grad_norm)
                bar.update(1)
                metrics = self._validate() if self._due(self.config.val_every) else None
                last = self.step == target or (
                    deadline is not None and time.monotonic() >= deadline
                )
                if metrics is not None or self._due(self.config.log_every) or last:
                    record = self._record(log, losses, norms, lr, metrics)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    losses, norms = [], []
                if self._due(self.config.save_every) or last:
                    self.save(self.out_dir / "last.safetensors")
                if last:
                    break

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint of the full training state to ``path`` (atomically)."""
        return save_checkpoint(
            path, self.model, self.optimizer, self.scheduler, step=self.step,
            rng={"torch": torch.get_rng_state(), "data": self.generator.get_state()},
            train_config=self.config.to_dict(), extra=self.extra, best_metric=self.best_metric,
        )

    def _train_step(self) -> tuple[Tensor, Tensor]:
        """One optimiser step on a fresh batch; returns the loss and the pre-clip grad norm."""
        device = next(self.model.parameters()).device
        batch = self.sample_batch(self.generator).to(device)
        if batch.f_test is None:
            raise ValueError("sample_batch must return batches with f_test (training targets)")
        loss = masked_nll(self.model(batch), batch.f_test, batch.test_mask())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.detach(), grad_norm.detach()

    def _due(self, every: int) -> bool:
        return self.step % every == 0

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
        if self.best_metric is None or metrics["nll"] < self.best_metric:
            self.best_metric = metrics["nll"]
            self.save(self.out_dir / "best.safetensors")
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
                metrics: dict[str, float] | None) -> dict[str, Any]:
        """Append one JSON line: means over the steps since the last record, and metrics."""
        record: dict[str, Any] = {
            "step": self.step,
            "loss": torch.stack(losses).mean().item(),
            "lr": lr,
            "grad_norm": torch.stack(norms).mean().item(),
            "time": time.time(),
        }
        record.update({f"val_{k}": v for k, v in (metrics or {}).items()})
        log.write(json.dumps(record) + "\n")
        log.flush()
        return record
