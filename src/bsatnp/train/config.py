"""Training configuration: plain data, serialisable to JSON (defaults: SPEC §7)."""

from __future__ import annotations

from dataclasses import dataclass

from bsatnp.config import Config
from bsatnp.precision import check_training_precision

_POSITIVE_INTS = ("steps", "batch_size", "val_every", "val_batches", "save_every", "log_every",
                  "max_bad_steps")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation, validation and checkpointing settings of one training run.

    Attributes:
        steps: Total optimiser steps (also the length of the cosine decay).
        batch_size: Tasks per batch, read by whoever builds the task sampler.
        lr: Peak (initial) learning rate of AdamW.
        final_lr_factor: Final learning rate as a fraction of ``lr`` (1: constant rate).
        warmup_steps: Steps of linear learning-rate warm-up before the cosine decay.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW moment decay rates.
        clip_norm: Global gradient-norm clipping threshold.
        val_every: Run validation every this many steps.
        val_batches: Validation batches, read by whoever builds the validation function.
        save_every: Write ``last.safetensors`` every this many steps.
        seed: Seed of the generator that draws training batches.
        log_every: Write a training record to ``log.jsonl`` every this many steps.
        out_dir: Directory for checkpoints and the log.
        max_bad_steps: Stop training with an error after this many consecutive steps whose
            loss or gradient norm is NaN or infinite (each such step is skipped: no update).
        validate_start: Also validate the starting weights (step 0 of a fresh run), so that
            ``best.safetensors`` keeps them when no step improves on them (fine-tuning).
        early_stop_patience: Stop training after this many validations in a row without a
            new best validation NLL (``None``: never stop early). The run ends as at its
            last step (log record, ``last.safetensors``) and stays stopped on resume;
            ``best.safetensors`` holds the state to use.
        workers: Processes that draw training batches ahead of the loop
            (:class:`~bsatnp.train.prefetch.Prefetcher`; 0: drawn in the loop from the
            generator itself). Any number above 0 gives the same batches, which differ
            from those of 0.
        precision: ``"fp32"``, or ``"bf16"`` for mixed precision: the training forward
            under bf16 autocast, weights, gradients, loss and optimiser in float32
            (:mod:`bsatnp.precision`). Validation always runs in float32.
    """

    steps: int = 100_000
    batch_size: int = 8
    lr: float = 1e-4
    final_lr_factor: float = 2e-5
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float = 0.5
    val_every: int = 1000
    val_batches: int = 32
    save_every: int = 1000
    seed: int = 0
    log_every: int = 10
    out_dir: str = "runs/exp"
    max_bad_steps: int = 10
    validate_start: bool = False
    early_stop_patience: int | None = None
    workers: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_training_precision(self.precision)
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ValueError("TrainConfig.early_stop_patience must be >= 1 or None, got "
                             f"{self.early_stop_patience}")
        if self.workers < 0:
            raise ValueError(f"TrainConfig.workers must be >= 0, got {self.workers}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.final_lr_factor <= 1.0:
            raise ValueError(
                f"TrainConfig.final_lr_factor must be in [0, 1], got {self.final_lr_factor}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"TrainConfig.warmup_steps must be in [0, steps), got "
                             f"{self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.clip_norm <= 0:
            raise ValueError(f"TrainConfig.clip_norm must be > 0, got {self.clip_norm}")
