"""Train or fine-tune a model on the user's own table, keeping the best validation state.

The data are read and normalised as for prediction (:mod:`bsatnp.data`), split into
training and validation rows, and served as :class:`~bsatnp.data.table_task.TableTask`
batches to the :class:`~bsatnp.train.trainer.Trainer`; every checkpoint of the run carries
the schema and normaliser, so ``best.safetensors`` loads as a ready
:class:`~bsatnp.predictor.Predictor`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from bsatnp.data.table_task import TableTask
from bsatnp.experiment import refuse_existing_run, validator
from bsatnp.predictor import Predictor
from bsatnp.train.config import TrainConfig
from bsatnp.train.trainer import Trainer


def finetune(predictor: Predictor, data: Any, *, steps: int = 1000, split: str = "random",
             n_ctx: int = 256, n_test: int = 256, batch_size: int = 8, lr: float = 1e-4,
             warmup_steps: int = 0, final_lr_factor: float = 0.0, valid_fraction: float = 0.1,
             val_every: int | None = None, val_batches: int = 16,
             out_dir: str | os.PathLike[str] = "runs/finetune", seed: int = 0,
             progress: bool = True, space_scale: float | str = "auto",
             time_scale: float | str = "auto", method: str = "standard",
             value_transform: str = "none", crs: str | None = None, overwrite: bool = False,
             **roles: Any) -> Predictor:
    """Train ``predictor``'s model further on ``data`` and return the best state found.

    The predictor's normaliser is kept if it has one, else fitted on ``data``; the
    returned predictor carries the schema and normaliser (and is saved as
    ``out_dir/best.safetensors`` and ``last.safetensors``).

    Args:
        predictor: Start from its model (copied; the original is unchanged). A fresh
            model (e.g. ``Predictor(BSATNP(dim_s=2))``) trains from scratch.
        data: Observations in the data's units (DataFrame, xarray or mapping).
        steps: Optimiser steps.
        split: How tasks split rows: ``random``, ``block`` (spatial blocks as test
            sets) or ``time`` (forecast the later rows of time windows).
        n_ctx: Context slots per task (a random number of them valid).
        n_test: Test points per task.
        batch_size: Tasks per step.
        lr: Peak learning rate.
        warmup_steps: Linear warm-up steps.
        final_lr_factor: Final rate as a fraction of ``lr`` (cosine decay).
        valid_fraction: Share of rows held out for validation.
        val_every: Validate every this many steps (default: 10 times per run).
        val_batches: Validation batches.
        out_dir: Where checkpoints and the log go.
        seed: Seed of the row division and of the training batches.
        progress: Show a progress bar.
        space_scale: See :meth:`bsatnp.data.Normalizer.fit`.
        time_scale: Likewise.
        method: Likewise.
        value_transform: Likewise.
        crs: CRS of the data's space columns.
        overwrite: Replace a run already in ``out_dir`` (refused otherwise).
        **roles: Schema fields when the predictor has none (``values``, ``space``, ...).

    Raises:
        ValueError: On bad data, a schema that does not fit the model, too few rows, or an
            ``out_dir`` that already holds a run (without ``overwrite``).
    """
    refuse_existing_run(Path(out_dir), overwrite)
    schema, points, normalizer = predictor.observations(
        data, space_scale=space_scale, time_scale=time_scale, method=method,
        value_transform=value_transform, crs=crs, **roles)
    columns = {role: torch.as_tensor(array, dtype=torch.float32)
               for role, array in normalizer.inputs(points, schema).items()}
    generator = torch.Generator().manual_seed(seed)
    task = TableTask.from_columns(columns, split, valid_fraction, generator, n_ctx=n_ctx,
                                  n_test=n_test, batch_size=batch_size,
                                  likelihood=predictor.model.likelihood)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                         final_lr_factor=final_lr_factor,
                         val_every=val_every or max(1, steps // 10), val_batches=val_batches,
                         save_every=max(1, min(steps, 100)), seed=seed, out_dir=str(out_dir))
    model = copy.deepcopy(predictor.model).train()
    card = {**predictor.card, "finetuned": {"rows": points.n, "split": split, "steps": steps}}
    tuned = Predictor(model, schema, normalizer, card)
    trainer = Trainer(model, lambda g: task.sample(g, "train"), config,
                      validator(task, val_batches, seed + 1), extra={"predictor": tuned.state()})
    trainer.fit(progress=progress)
    best = trainer.out_dir / "best.safetensors"
    return Predictor.load(best if best.is_file() else trainer.out_dir / "last.safetensors",
                          device=next(model.parameters()).device)
