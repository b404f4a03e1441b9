"""Experiments described by one YAML file: model, task, training and evaluation.

A file has up to four sections, each a mapping of dataclass fields (missing fields take
their defaults, the paper's values)::

    model:  # family (default bsatnp) and the fields of its config, e.g. BSATNPConfig;
      family: bsatnp       # the role widths and likelihood default to the task's
      num_blocks: 6
    task:   # name (default gp2d; see `bsatnp tasks`) and the fields of that task
      name: gp2d
      box: [-2.0, 2.0]
      lengthscale_prior: {beta: [3.0, 7.0]}
    train:  # TrainConfig (train.batch_size sets the training batches)
      steps: 100000
    eval:   # EvalConfig
      n_batches: {in_domain: 5000, shifted: 5000, scaled: 5000}

Priors are written ``{fixed: v}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
``{beta: [a, b]}``, ``{gamma: [shape, rate]}`` or ``{invgamma: [shape, scale]}``. Configs
shipped with the package (``gp2d``, ``geodesic``, ...) can be named instead of given as a
path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.config import Config, build_dataclass
from bsatnp.io.checkpoint import Checkpoint
from bsatnp.models import BSATNPConfig
from bsatnp.models.registry import (
    FAMILIES,
    ModelConfig,
    build_model,
    config_to_dict,
    split_family,
)
from bsatnp.tasks import Task
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.priors import Prior, prior_to_config
from bsatnp.tasks.registry import task_from_dict
from bsatnp.train.config import TrainConfig

SECTIONS = ("model", "task", "train", "eval")


@dataclass(frozen=True)
class EvalConfig(Config):
    """How a trained model is tested (and validated during training).

    Attributes:
        n_batches: Test batches per domain: one count, or a count per domain name.
        seed: Seed of the test batches.
        val_seed: Seed of the fixed in-domain validation batches used during training.
        domains: Domains to evaluate, names from the task's ``domains`` (default: all).
    """

    n_batches: int | dict[str, int] = 5000
    seed: int = 1000
    val_seed: int = 2000
    domains: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        counts = list(self.n_batches.values()) if isinstance(self.n_batches, dict) else [
            self.n_batches]
        if any(count < 1 for count in counts):
            raise ValueError(f"n_batches must be >= 1, got {self.n_batches}")
        if self.seed == self.val_seed:
            raise ValueError(f"seed and val_seed must differ (test ≠ validation), both {self.seed}")

    def domains_of(self, task: Task) -> tuple[str, ...]:
        """The domains to evaluate for ``task``, checked against it and ``n_batches``.

        Raises:
            ValueError: On a domain the task lacks, a repeated one, or ``n_batches`` given
                per domain without a count for each evaluated domain (or with others).
        """
        domains = task.domains if self.domains is None else self.domains
        unknown = [d for d in domains if d not in task.domains]
        if unknown or not domains or len(set(domains)) != len(domains):
            raise ValueError(f"eval.domains must be distinct names from {task.domains} (task "
                             f"{task.name}), got {list(domains)}")
        if isinstance(self.n_batches, dict):
            missing = [d for d in domains if d not in self.n_batches]
            extra = [d for d in self.n_batches if d not in task.domains]
            if missing or extra:
                raise ValueError(
                    f"eval.n_batches needs a count for each of {list(domains)} (and only "
                    f"domain names), missing {missing}, unknown {extra}"
                )
        return tuple(domains)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: model, in-domain task, training and evaluation settings.

    Attributes:
        model: Architecture: the config of any family in
            :data:`~bsatnp.models.registry.FAMILIES`.
        task: In-domain task (any registered :class:`~bsatnp.tasks.Task`); its
            ``batch_size`` applies to validation and test batches.
        train: Optimisation; ``train.batch_size`` is the training batch size.
        eval: Test protocol.
        source: Where the config came from (used in error messages).
    """

    model: ModelConfig = field(default_factory=BSATNPConfig)
    task: Task = field(default_factory=GP2DTask)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = field(default="<defaults>", compare=False)

    def __post_init__(self) -> None:
        if self.train.seed in (self.eval.seed, self.eval.val_seed):
            raise ValueError(
                f"{self.source}: train.seed ({self.train.seed}) must differ from eval.seed and "
                "eval.val_seed, or training would see the test or validation batches"
            )
        try:
            self.eval.domains_of(self.task)
        except ValueError as err:
            raise ValueError(f"{self.source}: {err}") from err

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ExperimentConfig:
        """Build from a mapping with (some of) the sections ``model/task/train/eval``.

        Raises:
            ValueError: On an unknown section or key, or a bad value; the message names
                ``source`` and the key (e.g. ``cfg.yaml: train.lr: expected float ...``).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping with sections {list(SECTIONS)}")
        unknown = sorted(str(key) for key in data if key not in SECTIONS)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
        try:
            task = task_from_dict(_mapping(data.get("task"), "task"))
            family, model_fields = split_family(_mapping(data.get("model"), "model"))
            model_cls = FAMILIES[family].config
            defaults = {key: value for key, value in task.model_defaults().items()
                        if key in model_cls.__dataclass_fields__}  # the task's role widths
            parts = {
                "task": task,
                "model": build_dataclass(model_cls, {**defaults, **model_fields}, "model"),
                **{name: build_dataclass(cls_, _mapping(data.get(name), name), name)
                   for name, cls_ in (("train", TrainConfig), ("eval", EvalConfig))},
            }
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        return cls(**parts, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready, storable in a checkpoint; inverse of :meth:`from_dict`)."""
        task = {"name": self.task.name}
        for f in fields(self.task):  # type: ignore[arg-type]
            value = getattr(self.task, f.name)
            task[f.name] = prior_to_config(value) if isinstance(value, Prior) else value
        ev = {f.name: getattr(self.eval, f.name) for f in fields(self.eval)}
        return {"model": config_to_dict(self.model), "task": task, "train": self.train.to_dict(),
                "eval": ev}

    def with_out_dir(self, out_dir: str | os.PathLike[str]) -> ExperimentConfig:
        """A copy that writes its training outputs to ``out_dir``."""
        return replace(self, train=replace(self.train, out_dir=str(out_dir)))

    def build_model(self) -> nn.Module:
        """A freshly initialised model, seeded from ``train.seed`` (reproducible).

        Raises:
            ValueError: If the model section does not make a valid model.
        """
        torch.manual_seed(self.train.seed)
        try:
            return build_model(self.model)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"{self.source}: model: cannot build the model: {err}") from err


def load_experiment(path_or_name: str | os.PathLike[str]) -> ExperimentConfig:
    """Read an experiment from a YAML file, or a bundled config by name (``gp2d``).

    Raises:
        FileNotFoundError: If it is neither an existing file nor a bundled config.
        ValueError: If the YAML is malformed or a section, key or value is invalid.
    """
    import yaml

    path = resolve_config(path_or_name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    return ExperimentConfig.from_dict(data or {}, source=str(path))


def resolve_config(path_or_name: str | os.PathLike[str]) -> Path:
    """Path of a config file, looking up bundled configs (``gp2d``, ``gp2d_quick``) by name.

    Raises:
        FileNotFoundError: If there is no such file or bundled config.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    bundled = resources.files("bsatnp") / "configs" / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and bundled.is_file():
        return Path(str(bundled))
    raise FileNotFoundError(
        f"config {path_or_name} not found (not a file, nor one of the bundled configs "
        f"{bundled_configs()})"
    )


def bundled_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    folder = resources.files("bsatnp") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def experiment_from_checkpoint(ckpt: Checkpoint) -> ExperimentConfig:
    """The experiment a :class:`Trainer` run stored in ``ckpt`` (defaults if none).

    The model and training configs come from the checkpoint's own fields (stored once);
    ``extra["experiment"]`` holds the task and evaluation settings. A shipped model stores
    none: its card's task (``envelope.task``) and evaluation (seed, batches per domain)
    stand in.

    Raises:
        ValueError: If the stored experiment is damaged.
    """
    stored = ckpt.provenance.experiment or _card_experiment(ckpt)
    if stored is None:
        return ExperimentConfig(source=str(ckpt.path))
    own = {"model": ckpt.model_config}
    if ckpt.train_config is not None:
        own["train"] = ckpt.train_config
    return ExperimentConfig.from_dict({**stored, **own},
                                      source=f"{ckpt.path} (stored experiment)")


def _card_experiment(ckpt: Checkpoint) -> dict[str, Any] | None:
    """The task and evaluation a shipped model's card names (it stores no experiment)."""
    card = (ckpt.provenance.predictor or {}).get("card")
    task = ((card or {}).get("envelope") or {}).get("task") if isinstance(card, dict) else None
    if not isinstance(task, dict):
        return None
    evaluation = card.get("evaluation") or {}
    batches = evaluation.get("batches") if isinstance(evaluation, dict) else None
    ev = {"seed": evaluation["seed"]} if "seed" in evaluation else {}
    if isinstance(batches, dict) and batches:
        ev.update(n_batches=dict(batches), domains=list(batches))
    return {"task": task, "eval": ev}


def _mapping(section: Any, name: str) -> dict[str, Any]:
    """A section's mapping (an empty or missing section is ``{}``)."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {type(section).__name__}")
    return dict(section)
