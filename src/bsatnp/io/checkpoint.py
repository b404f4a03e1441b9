"""Checkpoints: one self-describing ``.safetensors`` file per save, written atomically.

Layout of the file:

* tensors: model weights under ``model/<name>``, optimizer state under ``optim/...``,
  scheduler tensors (if any) under ``sched/...``, RNG states (``uint8``) under
  ``rng/<name>`` and tensors of the extra dict under ``extra/...``;
* string metadata: ``format`` (``"bsatnp-checkpoint"``), ``format_version``,
  ``bsatnp_version`` and JSON for ``model_config``, ``step``, ``best_metric``,
  ``optimizer``, ``scheduler``, ``train_config`` and ``extra``, and optionally
  ``trainer_state`` (the :class:`~bsatnp.train.trainer.Trainer`'s own counters; files
  without it load with ``None``).

Nested Python structures are stored as JSON in which tensors are references to stored
tensors, tuples and dicts with non-string keys are tagged, so ``load(save(x)) == x``
exactly. Loading only parses JSON and raw tensor bytes: it never executes code, and it
checks what it reads (a non-negative integer step, ``uint8`` RNG states, JSON nested at
most as deep as the interpreter allows) so that a damaged or hostile file fails with one
``ValueError`` naming the file and the field. :meth:`Checkpoint.build_model` builds the
saved config on the ``meta`` device first and compares every tensor's shape with the file
before allocating anything.

Each configuration is stored once: the model's in ``model_config``, the training run's in
``train_config``; the experiment layer keeps only the rest (task, evaluation) in ``extra``
(format 2). Format 1 files, whose ``extra`` repeated the model and training configs, still
load: the dedicated fields win.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.overrides import TorchFunctionMode

import bsatnp
from bsatnp.io.files import existing_file, write_atomic
from bsatnp.models.registry import build_model, config_from_dict, config_to_dict

FORMAT = "bsatnp-checkpoint"
FORMAT_VERSION = 2

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)
_JSON_SCALARS = (bool, int, float, str, type(None))
_PARAM_SHAPED_OPTIMIZER_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")
"""Optimizer state entries (Adam/AdamW/SGD) that have the shape of their parameter."""


@dataclass(frozen=True)
class Provenance:
    """Where a checkpoint's model comes from and how to use it: ``extra``'s fixed keys, typed.

    Attributes:
        experiment: Task and evaluation settings of the training run (the model and
            training configs are checkpoint fields of their own), or ``None``.
        init: The checkpoint or shipped model a run started from, or ``None``.
        predictor: Schema, normaliser and model card of a
            :class:`~bsatnp.predictor.Predictor` (plain data), or ``None``.
    """

    experiment: dict[str, Any] | None = None
    init: str | None = None
    predictor: dict[str, Any] | None = None

    @classmethod
    def read(cls, extra: dict[str, Any] | None, path: str | os.PathLike[str]) -> Provenance:
        """The records stored in ``extra`` (other keys are left to their writers).

        Raises:
            ValueError: If a record has the wrong type, naming the file.
        """
        extra = extra or {}
        for key, kind, what in (("experiment", dict, "a mapping"), ("init", str, "a path"),
                                ("predictor", dict, "a mapping")):
            if extra.get(key) is not None and not isinstance(extra[key], kind):
                raise ValueError(f"{path}: the stored {key} record is not {what}")
        return cls(extra.get("experiment"), extra.get("init"), extra.get("predictor"))

    def to_extra(self) -> dict[str, Any]:
        """The records as ``extra`` holds them (absent ones left out)."""
        return {key: value for key, value in (("experiment", self.experiment),
                                              ("init", self.init),
                                              ("predictor", self.predictor))
                if value is not None}


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds.

    Attributes:
        path: File it was read from (used in error messages).
        model_config: The saved model's config with its ``family``
            (:func:`~bsatnp.models.registry.config_to_dict`).
        model_state: Model state dict (CPU tensors).
        optimizer_state: Ready for ``optimizer.load_state_dict``, or ``None``.
        scheduler_state: Ready for ``scheduler.load_state_dict``, or ``None``.
        step: Optimiser steps taken when it was saved.
        rng: RNG states by name (``uint8`` tensors), e.g. ``torch`` and ``data``.
        train_config: :meth:`TrainConfig.to_dict` of the run, or ``None``.
        extra: Free-form dict given at save time (task config, normaliser, ...), or ``None``.
        version: ``bsatnp.__version__`` of the library that saved it.
        best_metric: Best validation NLL so far, or ``None`` (also when the stored value is
            not finite: a NaN best is no best).
        trainer_state: The :class:`~bsatnp.train.trainer.Trainer`'s own counters, or
            ``None`` (older files, or files not written by a Trainer).
    """

    path: Path
    model_config: dict[str, Any]
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    step: int
    rng: dict[str, Tensor]
    train_config: dict[str, Any] | None
    extra: dict[str, Any] | None
    version: str
    best_metric: float | None
    trainer_state: dict[str, Any] | None = None

    @property
    def provenance(self) -> Provenance:
        """The typed records of ``extra`` (:class:`Provenance`).

        Raises:
            ValueError: If a record is damaged.
        """
        return Provenance.read(self.extra, self.path)

    def build_model(self) -> nn.Module:
        """A new model of the saved family and config with the saved weights (train mode).

        The model is first built on the ``meta`` device (no memory) and its tensor names and
        shapes are compared with the stored ones; only a config that makes exactly the
        stored tensors is built for real, so a damaged config (say ``dim: 100000`` beside
        small weights) fails at once instead of allocating a huge model.

        Raises:
            ValueError: If the config or the weights do not make a valid model; a mismatch
                names the first tensor that differs.
        """
        invalid = f"{self.path}: the saved model config is invalid"
        try:
            config = config_from_dict(self.model_config)
            with torch.device("meta"), _NoInitialisation():
                skeleton = build_model(config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{invalid}: {err}") from err
        except (RuntimeError, NotImplementedError):
            skeleton = None  # cannot be built on meta: the real build below says why, if ever
        if skeleton is not None:
            self._check_model_shapes(skeleton.state_dict())
        try:
            model = build_model(config)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{invalid}: {err}") from err
        self.restore(model, "model")
        return model

    def _check_model_shapes(self, expected: dict[str, Tensor]) -> None:
        """Raise if the stored model tensors are not exactly ``expected``'s names and shapes."""
        where = f"{self.path}: the saved model state does not fit the saved model config"
        for name, tensor in expected.items():
            if name not in self.model_state:
                raise ValueError(f"{where}: tensor {name!r} is missing from the file")
            stored = tuple(self.model_state[name].shape)
            if stored != tuple(tensor.shape):
                raise ValueError(f"{where}: tensor {name!r} has shape {stored} in the file, "
                                 f"but the config makes {tuple(tensor.shape)}")
        unexpected = [name for name in self.model_state if name not in expected]
        if unexpected:
            raise ValueError(f"{where}: the file holds tensor(s) the config does not make: "
                             f"{unexpected[:5]}")

    def restore(
        self,
        target: nn.Module | Optimizer | LRScheduler,
        part: Literal["model", "optimizer", "scheduler"],
    ) -> None:
        """Load the saved ``part`` into ``target`` via its ``load_state_dict``.

        Raises:
            ValueError: If the checkpoint holds no such state or it does not fit ``target``.
        """
        state = {
            "model": self.model_state,
            "optimizer": self.optimizer_state,
            "scheduler": self.scheduler_state,
        }[part]
        if state is None:
            raise ValueError(f"{self.path}: the checkpoint holds no {part} state")
        if part == "optimizer" and isinstance(target, Optimizer):
            self._check_optimizer_shapes(target, state)
        try:
            target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: the saved {part} state does not fit: {err}") from err

    def _check_optimizer_shapes(self, optimizer: Optimizer, state: Any) -> None:
        """Raise unless every parameter-shaped entry of ``state`` has its parameter's shape.

        ``load_state_dict`` checks only the number of parameters per group, so moments of
        the wrong shape would load and fail at the first optimiser step, far from the cause.
        Saved parameters are matched to ``optimizer``'s in order, as ``load_state_dict`` does.
        """
        where = f"{self.path}: the saved optimizer state does not fit"
        try:
            ids = [index for group in state["param_groups"] for index in group["params"]]
            entries = dict(state["state"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: it is malformed ({err!r})") from err
        params = [param for group in optimizer.param_groups for param in group["params"]]
        if len(ids) != len(params):
            raise ValueError(f"{where}: it holds {len(ids)} parameters, the optimizer "
                             f"{len(params)}")
        by_id = dict(zip(ids, params, strict=True))
        for index, entry in entries.items():
            if index not in by_id or not isinstance(entry, dict):
                raise ValueError(f"{where}: it holds a state for an unknown parameter {index!r}")
            expected = tuple(by_id[index].shape)
            for key in _PARAM_SHAPED_OPTIMIZER_STATE:
                value = entry.get(key)
                if value is None:
                    continue
                shape = tuple(value.shape) if isinstance(value, Tensor) else None
                if shape != expected:
                    raise ValueError(f"{where}: {key!r} of parameter {index} has shape {shape}, "
                                     f"the parameter {expected}")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    *,
    step: int = 0,
    rng: dict[str, Tensor] | None = None,
    train_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    best_metric: float | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint file atomically (temp file in the same dir, fsync, rename).

    A crash at any point leaves either the previous file or the new one, never a mix.

    Args:
        path: Destination, conventionally ending in ``.safetensors``.
        model: Model whose ``config`` and weights are saved.
        optimizer: Optimizer whose state is saved, if any.
        scheduler: Learning-rate scheduler whose state is saved, if any.
        step: Optimiser steps taken so far.
        rng: RNG states by name, as returned by ``torch.get_rng_state()`` or
            ``Generator.get_state()`` (``uint8`` tensors).
        train_config: JSON-like training configuration.
        extra: Free-form dict of JSON values, tuples and tensors.
        best_metric: Best validation NLL so far.
        trainer_state: JSON-like counters of the Trainer (stored only when given).

    Returns:
        The path written.

    Raises:
        ValueError: If ``rng`` holds a non-``uint8`` tensor or a value cannot be stored.
    """
    st = _safetensors()
    path = Path(path)
    tensors = {f"model/{k}": _stored(v) for k, v in model.state_dict().items()}
    for name, state in (rng or {}).items():
        if not isinstance(state, Tensor) or state.dtype != torch.uint8:
            raise ValueError(f"rng[{name!r}] must be a uint8 tensor (an RNG state)")
        tensors[f"rng/{name}"] = _stored(state)
    fields = {
        "model_config": config_to_dict(model.config),
        "step": int(step),
        "best_metric": None if best_metric is None else float(best_metric),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "train_config": train_config,
        "extra": extra,
    }
    if trainer_state is not None:
        fields["trainer_state"] = trainer_state
    prefixes = {"optimizer": "optim", "scheduler": "sched"}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "bsatnp_version": bsatnp.__version__,
    }
    for key, value in fields.items():
        metadata[key] = json.dumps(_encode(value, prefixes.get(key, key), tensors))
    write_atomic(path, st.torch.save(tensors, metadata=metadata))
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated or corrupt, not a safetensors file, not a
            bsatnp checkpoint, from a newer checkpoint format, or if a field is damaged
            (a step that is not a non-negative integer, a best metric that is not a
            number, an RNG state that is not a 1-D ``uint8`` tensor, nested JSON too deep).
    """
    st = _safetensors()
    path = existing_file(path, "checkpoint")
    try:
        with st.safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except st.SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not a bsatnp checkpoint "
            f"(its metadata lacks format={FORMAT!r}); load plain weights with safetensors"
        )
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version!r}; this bsatnp reads versions "
            f"up to {FORMAT_VERSION} (upgrade bsatnp)"
        )
    fields = {
        key: _decoded_field(path, metadata, key, tensors)
        for key in ("model_config", "step", "best_metric", "optimizer", "scheduler",
                    "train_config", "extra")
    }
    trainer_state = (_decoded_field(path, metadata, "trainer_state", tensors)
                     if "trainer_state" in metadata else None)
    step, best = fields["step"], fields["best_metric"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: checkpoint field 'step' must be a non-negative integer, "
                         f"got {step!r}")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise ValueError(f"{path}: checkpoint field 'best_metric' must be a number or null, "
                         f"got {best!r}")
    if not isinstance(fields["model_config"], dict):
        raise ValueError(f"{path}: checkpoint field 'model_config' must be a mapping, got "
                         f"{type(fields['model_config']).__name__}")
    for key in ("extra", "train_config"):  # None when not given at save time
        if fields[key] is not None and not isinstance(fields[key], dict):
            raise ValueError(f"{path}: checkpoint field {key!r} must be a mapping, got "
                             f"{type(fields[key]).__name__}")
    if trainer_state is not None and not isinstance(trainer_state, dict):
        raise ValueError(f"{path}: checkpoint field 'trainer_state' must be a mapping")
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    for name, state in rng.items():
        if state.dtype != torch.uint8 or state.dim() != 1:
            raise ValueError(f"{path}: checkpoint field rng[{name!r}] is not an RNG state "
                             f"(a 1-D uint8 tensor), got {state.dtype} of shape "
                             f"{tuple(state.shape)}")
    return Checkpoint(
        path=path,
        model_config=fields["model_config"],
        model_state={k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
        optimizer_state=fields["optimizer"],
        scheduler_state=fields["scheduler"],
        step=step,
        rng=rng,
        train_config=fields["train_config"],
        extra=fields["extra"],
        version=metadata.get("bsatnp_version", "unknown"),
        best_metric=None if best is None or not math.isfinite(best) else float(best),
        trainer_state=trainer_state,
    )


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the saved model from its config and weights, on ``map_location``, in eval mode.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a valid bsatnp checkpoint or its weights do not fit.
    """
    return load_checkpoint(path).build_model().to(map_location).eval()


def _safetensors() -> ModuleType:
    try:
        import safetensors
        import safetensors.torch
    except ImportError as err:
        raise ImportError(
            "checkpoints need the 'safetensors' package (a dependency of bsatnp): "
            "pip install safetensors"
        ) from err
    return safetensors


def _stored(tensor: Tensor) -> Tensor:
    """A contiguous CPU copy that shares memory with nothing (safetensors requires it)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def _encode(obj: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-ready form of ``obj``; its tensors are moved into ``tensors`` under ``key/...``."""
    if isinstance(obj, Tensor):
        tensors[key] = _stored(obj)
        return {_TENSOR: key}
    if isinstance(obj, _JSON_SCALARS):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        bad = [k for k in obj if not isinstance(k, _JSON_SCALARS)]
        if bad:
            raise ValueError(f"cannot store the dict key {bad[0]!r} at {key!r} in a checkpoint")
        return {_ITEMS: [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    raise ValueError(f"cannot store a {type(obj).__name__} at {key!r} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {_TENSOR}:
        return tensors[obj[_TENSOR]]
    if set(obj) == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in obj[_TUPLE])
    if set(obj) == {_ITEMS}:
        return {k: _decode(v, tensors) for k, v in obj[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _decoded_field(path: Path, metadata: dict[str, str], key: str,
                   tensors: dict[str, Tensor]) -> Any:
    if key not in metadata:
        raise ValueError(f"{path}: checkpoint metadata lacks the {key!r} field")
    try:
        return _decode(json.loads(metadata[key]), tensors)
    except RecursionError as err:  # json and _decode recurse once per nesting level
        raise ValueError(f"{path}: checkpoint field {key!r} is damaged: its JSON is nested "
                         "too deeply") from err
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: checkpoint field {key!r} is damaged: {err!r}") from err


_RANDOM_FILLS = frozenset({
    Tensor.normal_, Tensor.uniform_, Tensor.random_, Tensor.exponential_, Tensor.bernoulli_,
    Tensor.log_normal_, Tensor.cauchy_, Tensor.geometric_})


class _NoInitialisation(TorchFunctionMode):
    """Modules built for their shapes only: initialisers and random fills do nothing.

    A random fill of a ``meta`` tensor runs through torch's Python references, which load
    its compiler stack (``torch._dynamo`` and sympy, about 70 MiB resident for the rest of
    the process); a shape check needs no values.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RANDOM_FILLS or (getattr(func, "__module__", None) == "torch.nn.init"
                                     and func.__name__.endswith("_")):
            return (args or tuple(kwargs.values()))[0]  # the tensor, left as it is
        return func(*args, **kwargs)
