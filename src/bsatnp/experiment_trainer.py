"""The :class:`~bsatnp.train.trainer.Trainer` of an experiment.

Its training batches (drawn ahead in worker processes with ``train.workers``), its
validation, and a run that is fresh, resumed, or started from trained weights, in an output
directory claimed for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bsatnp.batch import Batch
from bsatnp.evaluate import validator
from bsatnp.experiment import ExperimentConfig
from bsatnp.io.checkpoint import Provenance, load_checkpoint
from bsatnp.tasks import Task
from bsatnp.train import run_dir
from bsatnp.train.distributed import Replicas
from bsatnp.train.prefetch import Prefetcher
from bsatnp.train.trainer import SampleBatch, Trainer


def training_sampler(config: ExperimentConfig) -> SampleBatch:
    """Training batches: the in-domain task with ``train.batch_size`` tasks per batch.

    With ``train.workers`` they are drawn ahead in worker processes, one seed per batch from
    the trainer's generator (:class:`~bsatnp.train.prefetch.Prefetcher`).
    """
    task = config.task.with_batch_size(config.train.batch_size)
    if config.train.workers:
        return Prefetcher(TaskDraw(task), config.train.workers)
    return lambda generator: task.sample(generator, "train")


@dataclass(frozen=True)
class TaskDraw:
    """The training batch of ``task`` for one seed (picklable, for prefetch workers)."""

    task: Task

    def __call__(self, seed: int) -> Batch:
        """The batch of ``seed``."""
        return self.task.sample(torch.Generator().manual_seed(seed), "train")


_RESUME_HINT = "--resume {last}"


def build_trainer(config: ExperimentConfig, resume: str | os.PathLike[str] | None = None,
                  out_dir: str | os.PathLike[str] | None = None,
                  device: str | torch.device = "cpu", overwrite: bool = False,
                  replicas: Replicas | None = None,
                  init: str | os.PathLike[str] | None = None) -> Trainer:
    """A :class:`Trainer` for ``config``, fresh or resumed from a checkpoint.

    A fresh run would truncate the log and replace the checkpoints of a run already in its
    output directory, so it refuses a directory holding any of
    :data:`~bsatnp.train.run_dir.RUN_FILES` unless ``overwrite``; so does a resume that
    would write into another run's directory. The output directory is claimed for this
    process (:func:`bsatnp.train.run_dir.claim`) until :meth:`Trainer.fit` ends.

    Args:
        config: The experiment (its task and validation settings are used on resume too).
        resume: Checkpoint written by a previous run of the same experiment.
        out_dir: Where checkpoints and the log go (default: ``config.train.out_dir``, or
            on resume the directory the run used before).
        device: Where the model trains (batches are drawn on the CPU and moved there).
        overwrite: Allow writing over the run files already in the output directory.
        replicas: Data-parallel rank and world size under torchrun (``None``: one process).
        init: A fresh run (new optimiser, learning-rate schedule from step 0) starting from
            the weights of this checkpoint or shipped model file instead of a random
            initialisation: fine-tuning, or a warm restart with a longer schedule.

    Raises:
        FileNotFoundError: If ``resume`` or ``init`` does not exist.
        ValueError: If ``resume`` is not a Trainer checkpoint or its model (or that of
            ``init``) differs from ``config.model``; if both ``resume`` and ``init`` are
            given; if the output directory holds another run (without ``overwrite``); or
            if another process is using it.
    """
    if resume is not None and init is not None:
        raise ValueError("give either resume (continue a run) or init (start one from "
                         "trained weights), not both")
    if out_dir is not None:
        config = config.with_out_dir(out_dir)
    main = replicas is None or replicas.is_main  # only rank 0 writes, so only it claims
    claimed = Path(config.train.out_dir) if resume is None or out_dir is not None else None
    if main and claimed is not None:
        run_dir.claim(claimed)  # before the check: no other run can slip in after it
    try:
        trainer = _trainer(config, resume, out_dir, device, overwrite, replicas, init)
    except BaseException:
        if main and claimed is not None:
            run_dir.release(claimed)
        raise
    if main and claimed is None:
        run_dir.claim(trainer.out_dir)
    return trainer


def _trainer(config: ExperimentConfig, resume: str | os.PathLike[str] | None,
             out_dir: str | os.PathLike[str] | None, device: str | torch.device,
             overwrite: bool, replicas: Replicas | None,
             init: str | os.PathLike[str] | None) -> Trainer:
    """:func:`build_trainer` once its output directory is claimed."""
    if resume is None and not overwrite:
        run_dir.refuse_existing_run(Path(config.train.out_dir), None, _RESUME_HINT)
    sample = training_sampler(config)
    validate = validator(config.task, config.train.val_batches, config.eval.val_seed)
    stored = config.to_dict()  # model and train configs are checkpoint fields of their own
    run = Provenance(experiment={key: stored[key] for key in ("task", "eval")})
    if resume is None:
        model = config.build_model()
        if init is not None:
            model = _initial_weights(model, config, init)
            run = replace(run, init=str(init))  # kept in every checkpoint of the run
        return Trainer(model.to(device), sample, config.train, validate, run.to_extra(),
                       replicas)
    if out_dir is not None and not overwrite:
        run_dir.refuse_existing_run(Path(out_dir), Path(resume), _RESUME_HINT)
    trainer = Trainer.from_checkpoint(  # written in format 2 from now on, init kept
        resume, sample, validate, map_location=device, replicas=replicas, out_dir=out_dir,
        extra=lambda stored: replace(run, init=Provenance.read(stored, resume).init).to_extra())
    if trainer.model.config != config.model:
        raise ValueError(
            f"{resume}: the checkpoint's model differs from the model in {config.source}"
        )
    return trainer


def _initial_weights(model: nn.Module, config: ExperimentConfig,
                     init: str | os.PathLike[str]) -> nn.Module:
    """``model`` with the weights of the checkpoint ``init`` (same architecture required).

    Only the likelihood may differ (a count model started from a Gaussian one):
    :meth:`NeuralProcess.with_likelihood <bsatnp.models.base.NeuralProcess.with_likelihood>`.
    """
    trained = load_checkpoint(init).build_model()
    if trained.config.replaced(likelihood=config.model.likelihood) != config.model:
        raise ValueError(f"{init}: its model differs from the model in {config.source}; "
                         "init needs the same architecture (the likelihood may differ)")
    if trained.config != config.model:
        trained = trained.with_likelihood(config.model.likelihood)
    model.load_state_dict(trained.state_dict())
    return model
