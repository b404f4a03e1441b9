"""Checkpoints: one self-describing ``.safetensors`` file per save, written atomically.

Layout of the file:

* tensors: model weights under ``model/<name>``, optimizer state under ``optim/...``,
  scheduler tensors (if any) under ``sched/...``, RNG states (``uint8``) under
  ``rng/<name>`` and tensors of the extra dict under ``extra/...``;
* string metadata: ``format`` (``"bsatnp-checkpoint"``), ``format_version``,
  ``bsatnp_version`` and JSON for ``model_config``, ``step``, ``best_metric``,
  ``optimizer``, ``scheduler``, ``train_config`` and ``extra``.

Nested Python structures are stored as JSON in which tensors are references to stored
tensors, tuples and dicts with non-string keys are tagged, so ``load(save(x)) == x``
exactly. Loading only parses JSON and raw tensor bytes: it never executes code.

Each configuration is stored once: the model's in ``model_config``, the training run's in
``train_config``; the experiment layer keeps only the rest (task, evaluation) in ``extra``
(format 2). Format 1 files, whose ``extra`` repeated the model and training configs, still
load: the dedicated fields win.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

import bsatnp
from bsatnp.io.files import write_atomic
from bsatnp.models.registry import build_model, config_from_dict, config_to_dict

FORMAT = "bsatnp-checkpoint"
FORMAT_VERSION = 2

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)
_JSON_SCALARS = (bool, int, float, str, type(None))


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
        best_metric: Best validation NLL so far, or ``None``.
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

    def build_model(self) -> nn.Module:
        """A new model of the saved family and config with the saved weights (train mode).

        Raises:
            ValueError: If the config or the weights do not make a valid model.
        """
        try:
            model = build_model(config_from_dict(self.model_config))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{self.path}: the saved model config is invalid: {err}") from err
        self.restore(model, "model")
        return model

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
        try:
            target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: the saved {part} state does not fit: {err}") from err


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
            bsatnp checkpoint, or from a newer checkpoint format.
    """
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
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
    return Checkpoint(
        path=path,
        model_config=fields["model_config"],
        model_state={k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
        optimizer_state=fields["optimizer"],
        scheduler_state=fields["scheduler"],
        step=fields["step"],
        rng={k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")},
        train_config=fields["train_config"],
        extra=fields["extra"],
        version=metadata.get("bsatnp_version", "unknown"),
        best_metric=fields["best_metric"],
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
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: checkpoint field {key!r} is damaged: {err!r}") from err
