"""Tasks by name: how configs, checkpoints and the CLI find a task class.

A task is stored as plain data with a ``name`` key next to its fields, e.g.
``{"name": "geodesic", "batch_size": 8, ...}``; a missing ``name`` means ``"gp2d"``
(experiments written before other tasks existed). Register a new task with
:func:`register_task` (see docs/design.md, "Adding a task").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from bsatnp.config import build_dataclass
from bsatnp.tasks.base import Task, task_envelope
from bsatnp.tasks.priors import Prior, prior_from_config

T = TypeVar("T", bound=type[Task])

TASKS: dict[str, type[Task]] = {}
"""Task name → task class."""
DEFAULT_TASK = "gp2d"


def register_task(cls: T) -> T:
    """Class decorator: make ``cls`` available under ``cls.name``.

    Raises:
        ValueError: If another class is registered under the same name.
    """
    if not issubclass(cls, Task):
        raise ValueError(f"{cls.__name__} does not implement bsatnp.tasks.Task")
    known = TASKS.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"task name {cls.name!r} is taken by {known.__qualname__}")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    """The class registered under ``name``.

    Raises:
        ValueError: If no task has that name.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {task_names()}")
    return TASKS[name]


def task_names() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(TASKS)


def split_name(data: dict[str, Any]) -> tuple[type[Task], dict[str, Any]]:
    """``(task class, fields)`` of stored task data (``name`` defaults to ``gp2d``).

    Raises:
        ValueError: If the name is unknown.
    """
    fields = dict(data)
    return task_class(fields.pop("name", DEFAULT_TASK)), fields


def task_from_dict(data: Mapping[str, Any]) -> Task:
    """The task stored as ``data`` (``{"name": ..., **fields}``; priors as their config).

    Raises:
        ValueError: On an unknown name or field, or a bad value (naming the key).
    """
    cls, fields = split_name(dict(data))
    return build_dataclass(cls, fields, "task", {Prior: prior_from_config})


def training_card(experiment: Mapping[str, Any] | None, path: Any) -> dict[str, Any]:
    """The model card of a checkpoint a training run wrote, which has none of its own.

    Its task and the envelope the task gives (box, context sizes, framing; no batches
    drawn), so that a model trained on any task is not read with the 2D GP's box.

    Raises:
        ValueError: If the stored task is invalid, naming ``path``.
    """
    stored = (experiment or {}).get("task")
    if not isinstance(stored, dict):
        return {}
    try:
        task = task_from_dict(stored)
    except ValueError as err:
        raise ValueError(f"{path}: the stored task is invalid: {err}") from err
    return {"task": task.name, "envelope": task_envelope(task, stored, sampled=False)}
