"""The task contract: what every benchmark or data source gives the experiment layer.

A *task* is a frozen dataclass of plain settings that draws batches of neural-process
problems. The experiment layer (training, validation, evaluation, plots, the CLI) reads
nothing else, so a new process is one file with one registered class
(:func:`bsatnp.tasks.registry.register_task`):

* :meth:`Task.sample` draws one :class:`~bsatnp.batch.Batch` from a ``torch.Generator``;
* :meth:`Task.domain` derives a named evaluation domain (``in_domain`` is the task itself;
  out-of-distribution variants such as ``shifted`` are other tasks);
* :meth:`Task.sample_with_oracle` adds the exact predictive where one exists;
* :meth:`Task.model_defaults` gives the role widths and likelihood a model needs.

Evaluation sets are reproducible per batch: batch ``i`` of seed ``s`` is drawn from its own
generator :func:`batch_generator` ``(s, i)``, so any batch can be drawn without the ones
before it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch.distributions import Distribution

from bsatnp.batch import Batch

IN_DOMAIN = "in_domain"
"""The evaluation domain that is the training distribution itself."""
SPLITS = ("train", "valid", "test")
"""Which part of the data a batch is drawn from (synthetic tasks draw all alike)."""


class Task(ABC):
    """A distribution over batches of neural-process tasks (subclasses are dataclasses).

    Class attributes a subclass sets:
        name: Registry key (``gp2d``, ``geodesic``, ...).
        likelihood: ``"gaussian"`` or ``"categorical"``; what the model's head must be.
        domains: Evaluation domain names, :data:`IN_DOMAIN` first.
        has_oracle: Whether :meth:`sample_with_oracle` returns the exact predictive.
        has_field: Whether the task draws a map for figures (``field_batch(n_ctx,
            grid_size, generator)`` returns a one-task batch with a 2D test grid).
        class_names: Names of the classes of a categorical task, in value order.
        framed: Whether every task is put in its local frame (context box on the training
            box, values standardised) as local conditioning frames a neighbourhood; a
            model trained so is always used through such frames.

    Every subclass has a ``batch_size`` field (tasks per batch ``B``).
    """

    name: ClassVar[str]
    likelihood: ClassVar[str] = "gaussian"
    domains: ClassVar[tuple[str, ...]] = (IN_DOMAIN,)
    has_oracle: ClassVar[bool] = False
    has_field: ClassVar[bool] = False
    class_names: ClassVar[tuple[str, ...]] = ()
    framed: ClassVar[bool] = False
    batch_size: int

    @abstractmethod
    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """Draw one batch (with ``f_test``) using only ``generator`` for randomness."""

    def sample_with_oracle(
        self, generator: torch.Generator | None = None, split: str = "test"
    ) -> tuple[Batch, Distribution | None]:
        """The batch :meth:`sample` draws from this generator state, and the exact predictive.

        The predictive is at the batch's test points; ``None`` for tasks without an oracle.
        """
        return self.sample(generator, split), None

    def domain(self, name: str) -> Task:
        """The evaluation task of domain ``name`` (``in_domain`` is ``self``).

        Raises:
            ValueError: If the task has no such domain.
        """
        if name == IN_DOMAIN:
            return self
        raise ValueError(f"task {self.name!r} has no domain {name!r}; choose from {self.domains}")

    @abstractmethod
    def model_defaults(self) -> dict[str, Any]:
        """Fields every model of this task needs, as plain data.

        ``dim_x/s/t/f`` (0 = role absent) and the ``likelihood``; an experiment merges them
        under its ``model`` section.
        """

    def describe(self, domain: str = IN_DOMAIN) -> dict[str, Any]:
        """A few JSON-ready facts of the domain for result tables (sizes, box, ...)."""
        task = self.domain(domain)
        keys = ("batch_size", "n_ctx", "n_test", "box", "targets")
        return {key: _plain(getattr(task, key)) for key in keys if hasattr(task, key)}

    def with_batch_size(self, batch_size: int) -> Task:
        """A copy drawing ``batch_size`` tasks per batch."""
        return replace(self, batch_size=batch_size)  # type: ignore[type-var]


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The private generator of batch ``index`` of the evaluation set with ``seed``.

    Seeded from ``numpy.random.SeedSequence([seed, index])``, so distinct ``(seed, index)``
    pairs give unrelated streams (seeds 1000 and 2000 share no batch).
    """
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def eval_batches(task: Task, n_batches: int, seed: int, split: str = "test") -> Iterator[Batch]:
    """Yield ``n_batches`` reproducible batches.

    Batch ``i`` is ``task.sample(batch_generator(seed, i), split)``, whatever the global
    RNG and ``n_batches``.
    """
    for index in range(n_batches):
        yield task.sample(batch_generator(seed, index), split)


def task_envelope(task: Task, stored: Mapping[str, Any], sampled: bool = True
                  ) -> dict[str, Any]:
    """A model card's ``envelope`` for a model trained on ``task`` (stored as ``stored``).

    The box (``space_half_width``: the task's own half-width, else its box's, else the 2D
    GP's 2), the stored task and whether its contexts were framed; ``sampled`` adds what a
    training context looks like (:func:`context_envelope`, 64 batches drawn).
    """
    half_width = getattr(task, "half_width", None) or (
        abs(float(task.box[1])) if hasattr(task, "box") else 2.0)
    envelope: dict[str, Any] = {"space_half_width": half_width, "task": dict(stored),
                                "framed": task.framed}
    if sampled:
        found = context_envelope(task)
        if task.likelihood == "categorical":
            found.pop("values")
        envelope.update(found)
    return envelope


def context_envelope(task: Task, n_batches: int = 64, seed: int = 0) -> dict[str, Any]:
    """What one task's context looks like, averaged over tasks (a model card's envelope).

    A user's conditioning set plays the part of one task's context, so the normaliser maps
    the user's values onto ``values``: ``mean`` is the average of the per-task context
    means, ``std`` the root of the average per-task context variance (valid points only),
    one entry per value column. ``spacing`` is the median over tasks of the median distance
    from a context location to its nearest other location (``None`` without ``s``). Where
    contexts carry offsets (exposures), ``offsets`` holds the average over tasks of the
    context's log rate ``log(Σ f / Σ offset)`` and of its mean log offset.
    """
    means, variances, spacings, log_rates, log_offsets = [], [], [], [], []
    for batch in eval_batches(task, n_batches, seed, "train"):
        valid = batch.context_mask()
        mask = valid.to(batch.f_ctx.dtype)[..., None]  # [B, Lc, 1]
        count = mask.sum(1)  # [B, 1]
        mean = (batch.f_ctx * mask).sum(1) / count  # [B, Df]
        means.append(mean.double())
        variances.append((((batch.f_ctx - mean[:, None]) ** 2 * mask).sum(1) / count).double())
        for index in range(batch.batch_size if batch.s_ctx is not None else 0):
            where = torch.unique(batch.s_ctx[index][valid[index]].double(), dim=0)
            distance = torch.cdist(where, where).fill_diagonal_(math.inf)
            spacings.append(float(distance.min(1).values.median()))
        if batch.offset_ctx is not None:
            offset = batch.offset_ctx.double()
            total = (batch.f_ctx.double() * mask).sum(1) / (offset * mask).sum(1)  # [B, Df]
            log_rates.append(total.clamp_min(1e-12).log())
            log_offsets.append((offset.log() * mask).sum(1) / count)
    found = {"values": {"mean": [float(v) for v in torch.cat(means).mean(0)],
                        "std": [float(v) for v in torch.cat(variances).mean(0).sqrt()]},
             "spacing": float(np.median(spacings)) if spacings else None}
    if log_rates:
        found["offsets"] = {"log_rate": float(torch.cat(log_rates).mean()),
                            "log_offset": float(torch.cat(log_offsets).mean())}
    return found


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
