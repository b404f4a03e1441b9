"""Train or fine-tune a model on the user's own table, keeping the best validation state.

The data are read and normalised as for prediction (:mod:`bsatnp.data`), split into
training and validation rows, and served as :class:`~bsatnp.data.table_task.TableTask`
batches to the :class:`~bsatnp.train.trainer.Trainer`; every checkpoint of the run carries
the schema and normaliser, so ``best.safetensors`` loads as a ready
:class:`~bsatnp.predictor.Predictor`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bsatnp.data.table_task import TableTask
from bsatnp.evaluate import validator
from bsatnp.io.checkpoint import Provenance
from bsatnp.models.base import model_device
from bsatnp.train import run_dir
from bsatnp.train.config import TrainConfig
from bsatnp.train.trainer import Trainer

if TYPE_CHECKING:
    from bsatnp.predictor import Predictor

MAX_VALIDATIONS = 10
"""Validations per run at most (a short run validates less often, on fewer batches)."""


def finetune(predictor: Predictor, data: Any, *, steps: int = 1000, split: str = "random",
             n_ctx: int = 256, n_test: int = 256, batch_size: int = 8, lr: float = 1e-4,
             warmup_steps: int = 0, final_lr_factor: float = 0.0, valid_fraction: float = 0.1,
             val_every: int | None = None, val_batches: int | None = None,
             out_dir: str | os.PathLike[str] = "runs/finetune", seed: int = 0,
             progress: bool = True, space_scale: float | str = "auto",
             time_scale: float | str = "auto", method: str = "standard",
             value_transform: str = "none", crs: str | None = None, overwrite: bool = False,
             resume: bool = False, group: str | None = None, **roles: Any) -> Predictor:
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
            sets), ``time`` (forecast the later rows of time windows) or ``gap`` (holes
            cut into the data, each predicted from the ``n_ctx`` rows around it, framed as
            local conditioning frames a neighbourhood: the tuned model predicts with
            ``neighbours=n_ctx`` by default).
        n_ctx: Context slots per task (a random number of them valid).
        n_test: Test points per task.
        batch_size: Tasks per step.
        lr: Peak learning rate.
        warmup_steps: Linear warm-up steps.
        final_lr_factor: Final rate as a fraction of ``lr`` (cosine decay).
        valid_fraction: Share of rows held out for validation.
        val_every: Validate every this many steps (default: ``steps // 10``, and not
            more often than every 10 steps: a run validates at most 10 times).
        val_batches: Validation batches (default: ``steps // 5`` between 2 and 16, so
            validating costs a short run about as much as a fifth of its training).
        out_dir: Where checkpoints and the log go.
        seed: Seed of the row division and of the training batches.
        progress: Show a progress bar.
        space_scale: See :meth:`bsatnp.data.Normalizer.fit`.
        time_scale: Likewise.
        method: Likewise.
        value_transform: Likewise.
        crs: CRS of the data's space columns.
        overwrite: Replace a run already in ``out_dir`` (refused otherwise).
        group: A column naming the field of each row (a date, a sensor run): every
            training task is then drawn from one field, never mixing fields.
        resume: Continue the run in ``out_dir`` from its ``last.safetensors`` (after a
            kill or a ``steps`` budget): called with the same data and options, the result
            is bit for bit that of a run never stopped.
        **roles: Schema fields when the predictor has none (``values``, ``space``, ...).

    Raises:
        ValueError: On bad data, a schema that does not fit the model, too few rows, an
            ``out_dir`` that already holds a run (without ``overwrite`` or ``resume``),
            another process using ``out_dir``, or a ``resume`` whose data or options differ
            from the run's.
    """
    if resume and overwrite:
        raise ValueError("give either resume (continue the run in out_dir) or overwrite "
                         "(start afresh there), not both")
    with run_dir.claimed(out_dir):  # before the check: no other run can slip in after it
        if not (overwrite or resume):
            run_dir.refuse_existing_run(Path(out_dir), None, "--resume (resume=True)")
        return _finetune(predictor, data, steps=steps, split=split, n_ctx=n_ctx,
                         n_test=n_test, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                         final_lr_factor=final_lr_factor, valid_fraction=valid_fraction,
                         val_every=val_every, val_batches=val_batches, out_dir=out_dir,
                         seed=seed, progress=progress, space_scale=space_scale,
                         time_scale=time_scale, method=method,
                         value_transform=value_transform, crs=crs, resume=resume,
                         group=group, **roles)


def _finetune(predictor: Predictor, data: Any, *, steps: int, split: str, n_ctx: int,
              n_test: int, batch_size: int, lr: float, warmup_steps: int,
              final_lr_factor: float, valid_fraction: float, val_every: int | None,
              val_batches: int | None, out_dir: str | os.PathLike[str], seed: int,
              progress: bool, space_scale: float | str, time_scale: float | str, method: str,
              value_transform: str, crs: str | None, resume: bool, group: str | None,
              **roles: Any) -> Predictor:
    """:func:`finetune` once ``out_dir`` is claimed."""
    schema, points, normalizer = predictor.observations(
        data, space_scale=space_scale, time_scale=time_scale, method=method,
        value_transform=value_transform, crs=crs, group=group, **roles)
    columns = {role: torch.as_tensor(array, dtype=torch.float32)
               for role, array in normalizer.inputs(points, schema).items()}
    generator = torch.Generator().manual_seed(seed)
    task = TableTask.from_columns(columns, split, valid_fraction, generator, n_ctx=n_ctx,
                                  n_test=n_test, batch_size=batch_size,
                                  likelihood=predictor.model.likelihood,
                                  half_width=predictor.envelope.space_half_width,
                                  value_moments=predictor.envelope.values,
                                  groups=None if points.groups is None
                                  else torch.as_tensor(points.groups))
    val_batches = val_batches or min(16, max(2, steps // 5))
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                         final_lr_factor=final_lr_factor,
                         val_every=val_every or max(steps // MAX_VALIDATIONS, min(steps, 10)),
                         val_batches=val_batches, save_every=max(1, min(steps // 10, 50)),
                         seed=seed, out_dir=str(out_dir), validate_start=True)
    finetuned = {"rows": points.n, "split": split, "steps": steps, "n_ctx": n_ctx}
    card = {**predictor.card,
            "finetuned": finetuned if group is None else {**finetuned, "group": group}}
    state = type(predictor)(predictor.model, schema, normalizer, card).state()
    sample = lambda g: task.sample(g, "train")  # noqa: E731
    validate = validator(task, val_batches, seed + 1)
    last = Path(out_dir) / "last.safetensors"
    if resume:
        if not last.is_file():
            raise ValueError(f"{out_dir} holds no run to resume ({last.name} is missing); "
                             "start one without --resume")
        trainer = Trainer.from_checkpoint(last, sample, validate,
                                          map_location=model_device(predictor.model))
        _check_same_run(last, trainer, config, state)
    else:
        model = copy.deepcopy(predictor.model).train()
        trainer = Trainer(model, sample, config, validate,
                          extra=Provenance(predictor=state).to_extra())
    trainer.fit(progress=progress)
    best = trainer.out_dir / "best.safetensors"
    return type(predictor).load(best if best.is_file() else last,
                          device=model_device(trainer.model))


def _check_same_run(path: Path, trainer: Trainer, config: TrainConfig,
                    state: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless the resumed run had these options, data and normaliser."""
    stored, given = trainer.config.to_dict(), config.to_dict()
    differ = [f"{key} (run: {stored.get(key)!r}, now: {value!r})" for key, value in given.items()
              if stored.get(key) != value]
    if differ:
        raise ValueError(f"{path}: the run was started with other options: "
                         f"{'; '.join(differ)}; resume with the run's options")
    if _plain(Provenance.read(trainer.extra, path).predictor) != _plain(state):
        raise ValueError(f"{path}: the run was started on other data or another schema or "
                         "normaliser (they differ from what these data give); resume with "
                         "the run's data and options")


def _plain(data: Any) -> Any:
    """``data`` as JSON would give it back (sequences as lists), for comparison."""
    return json.loads(json.dumps(data))
