"""Training tasks drawn from one table of the user's data (for fine-tuning).

Rows are already in model units (:meth:`bsatnp.data.Normalizer.inputs`). Each task of a
batch splits a subset of rows into context and test points in one of three ways, built on
the samplers every task uses (:mod:`bsatnp.tasks.samplers`):

* ``random``: random rows, a random number of them valid context, the rest test points;
* ``block``: the test points are the rows nearest (in the max-norm of ``s``) to a random
  row, a compact spatial block; the context is drawn from the other rows;
* ``time``: windows of consecutive rows in time order; the context is the earlier part
  and the test points the later part (a forecast);
* ``gap``: the geometry of local conditioning (:mod:`bsatnp.data.neighbours`): a hole is
  cut around a random row (its ``h`` nearest rows, ``h`` log-uniform between a quarter of
  ``n_test`` and 32 times it), the test points are drawn from the hole and the context
  is the ``n_ctx`` rows nearest to the hole's centre outside it; each task is then mapped
  by its :class:`~bsatnp.data.neighbours.LocalFrame` as a neighbourhood is at prediction.

The rows are divided once into ``train`` and ``valid`` (a random fraction, or the latest
rows for ``time``); ``test`` draws from ``valid``. With ``groups`` (the field of each row,
a date say) every task is drawn from the rows of one random field, so no task mixes fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from bsatnp.batch import ROLES, Batch
from bsatnp.tasks.base import Task
from bsatnp.tasks.frames import LocalFrame, ValueMoments
from bsatnp.tasks.samplers import row_windows, valid_prefix_mask

SPLIT_KINDS = ("random", "block", "time", "gap")
HOLE_RANGE = (0.25, 32.0)
"""Rows in a ``gap`` task's hole, as multiples of ``n_test`` (log-uniform between)."""


@dataclass(frozen=True, eq=False)
class TableTask(Task):
    """Context/test splits of the rows of one table (module doc).

    Attributes:
        columns: Model-unit arrays by role (``x``, ``s``, ``t``, ``f``, and ``offset``
            where the likelihood reads one), each ``[N, D]``.
        rows: Row indices of each split (``train``, ``valid``), time-sorted for ``time``.
        n_ctx: Context slots per task (fewer when a split has fewer rows).
        n_test: Test points per task (likewise).
        kind: ``random``, ``block``, ``time`` or ``gap``.
        batch_size: Tasks per batch.
        likelihood: The model's likelihood (values are framed for ``gaussian`` only).
        half_width: Half-width of the box a ``gap`` task's context is framed onto.
        groups: The field of each row ``[N]`` (integer codes), or ``None``: one field.
        value_moments: The values a ``gap`` task's context is framed onto (``None``: mean
            0, std 1).
    """

    name: ClassVar[str] = "table"
    columns: dict[str, Tensor]
    rows: dict[str, Tensor]
    n_ctx: int = 256
    n_test: int = 256
    kind: str = "random"
    batch_size: int = 8
    likelihood: str = "gaussian"  # type: ignore[misc]  (per instance, not per class)
    half_width: float = 2.0
    groups: Tensor | None = None
    value_moments: ValueMoments | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {SPLIT_KINDS}, got {self.kind!r}")
        if self.kind in ("block", "gap") and "s" not in self.columns:
            raise ValueError(f"split={self.kind!r} needs space columns")
        if self.kind == "time" and "t" not in self.columns:
            raise ValueError("split='time' needs a time column")
        for split, rows in self.rows.items():
            if len(rows) < 2:
                raise ValueError(f"the {split} split has {len(rows)} row(s); a task needs at "
                                 "least 2 (one context point and one test point)")

    @classmethod
    def from_columns(cls, columns: dict[str, Tensor], kind: str, valid_fraction: float,
                     generator: torch.Generator, **fields: Any) -> TableTask:
        """Divide the rows into ``train`` and ``valid`` and build the task.

        Args:
            columns: Model-unit arrays by role, ``[N, D]`` each.
            kind: ``random``, ``block``, ``time`` or ``gap``.
            valid_fraction: Share of rows held out for validation (the latest for ``time``).
            generator: Randomness of the division.
            **fields: Other fields (``n_ctx``, ``n_test``, ``batch_size``, ``likelihood``).
        """
        n = len(columns["f"])
        if kind not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {SPLIT_KINDS}, got {kind!r}")
        if kind == "time" and "t" not in columns:
            raise ValueError("split='time' needs a time column (give time=...)")
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
        n_valid = max(2, round(n * valid_fraction))
        if n - n_valid < 2:
            raise ValueError(f"{n} rows are too few to train on: need at least 4")
        if kind == "time":
            order = torch.argsort(columns["t"][:, 0], stable=True)
        else:
            order = torch.randperm(n, generator=generator)
        rows = {"train": order[:n - n_valid], "valid": order[n - n_valid:]}
        if kind != "time":
            rows = {split: r.sort().values for split, r in rows.items()}
        return cls(columns=columns, rows=rows, kind=kind, **fields)

    def model_defaults(self) -> dict[str, Any]:
        """Widths of the roles present, and the likelihood."""
        dims = {f"dim_{r}": int(self.columns[r].shape[1]) if r in self.columns else 0
                for r in ROLES}
        return {**dims, "dim_f": int(self.columns["f"].shape[1]), "likelihood": self.likelihood}

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch of ``batch_size`` tasks from the rows of ``split`` (``test``: valid)."""
        rows = self.rows["valid" if split == "test" else split]
        if self.groups is not None:
            return self._by_field(rows, generator)
        return self._sample(rows, self.batch_size, generator)

    def _by_field(self, rows: Tensor, generator: torch.Generator | None) -> Batch:
        """Each task from the rows of one random field (among those large enough)."""
        fields = rows_by_field(rows, self.groups[rows])
        need = min(self.n_ctx + self.n_test, max(len(f) for f in fields))
        fields = [f for f in fields if len(f) >= need]
        picks = torch.randint(len(fields), (self.batch_size,), generator=generator)
        batches = [self._sample(fields[int(i)], 1, generator, sizes=_sizes(
            need, self.n_ctx, self.n_test)) for i in picks]
        return Batch(**{name: torch.cat([getattr(b, name) for b in batches])
                        for name in _FIELDS if getattr(batches[0], name) is not None})

    def _sample(self, rows: Tensor, B: int, generator: torch.Generator | None,
                sizes: tuple[int, int] | None = None) -> Batch:
        """``B`` tasks from ``rows`` (module doc)."""
        n_ctx, n_test = sizes or _sizes(len(rows), self.n_ctx, self.n_test)
        if self.kind == "gap":
            return self._gaps(rows, n_ctx, n_test, generator, B)
        if self.kind == "time":
            window = row_windows(len(rows), n_ctx + n_test, B, generator,
                                 distinct=len(rows) - n_ctx - n_test + 1 >= B)
            order = rows[window]
        elif self.kind == "block":
            s = self.columns["s"][rows]
            centre = torch.randint(len(rows), (B,), generator=generator)
            reach = (s[None, :, :] - s[centre][:, None, :]).abs().amax(-1)  # [B, N]
            nearest = torch.argsort(reach, dim=1)
            rest = nearest[:, n_test:]
            shuffled = torch.argsort(torch.rand(rest.shape, generator=generator), dim=1)
            rest = torch.gather(rest, 1, shuffled)
            order = rows[torch.cat([rest[:, :n_ctx], nearest[:, :n_test]], 1)]
        else:
            perm = torch.argsort(torch.rand(B, len(rows), generator=generator), dim=1)
            order = rows[perm[:, :n_ctx + n_test]]
        ctx, test = order[:, :n_ctx], order[:, n_ctx:]
        mask = valid_prefix_mask(B, n_ctx, max(1, n_ctx // 4), n_ctx, generator)
        if self.kind == "time":
            mask = torch.ones_like(mask)
        fields: dict[str, Tensor] = {"mask_ctx": mask}
        for role, values in self.columns.items():
            fields[f"{role}_ctx"] = values[ctx]
            fields[f"{role}_test"] = values[test]
        return Batch(**fields)

    def _gaps(self, rows: Tensor, n_ctx: int, n_test: int,
              generator: torch.Generator | None, B: int) -> Batch:
        """``B`` ``gap`` tasks (module doc), each in its local frame."""
        fields: dict[str, list[Tensor]] = {}
        for _ in range(B):
            _, context, test = self.gap(rows, n_ctx, n_test, generator)
            framed = self._framed(context, test, n_test)
            for name, value in framed.items():
                fields.setdefault(name, []).append(value)
        return Batch(**{name: torch.stack(values) for name, values in fields.items()})

    def gap(self, rows: Tensor, n_ctx: int, n_test: int, generator: torch.Generator | None
            ) -> tuple[Tensor, Tensor, Tensor]:
        """One hole among ``rows``: its rows, the context rows and the test rows.

        The hole is the ``h`` rows nearest to a random row (a disc); the context the
        ``n_ctx`` rows next nearest (the neighbourhood of the hole's centre outside it); the
        test rows a random subset of the hole of at most ``n_test``.
        """
        s = self.columns["s"][rows]
        low, high = (math.log(max(1.0, n_test * f)) for f in HOLE_RANGE)
        centre = int(torch.randint(len(rows), (1,), generator=generator))
        order = torch.argsort(((s - s[centre]) ** 2).sum(-1), stable=True)
        hole = round(math.exp(low + (high - low) * float(torch.rand(1, generator=generator))))
        hole = max(1, min(hole, len(rows) - n_ctx))
        inside = order[:hole][torch.randperm(hole, generator=generator)[:n_test]]
        return rows[order[:hole]], rows[order[hole:hole + n_ctx]], rows[inside]

    def _framed(self, context: Tensor, test: Tensor, n_test: int) -> dict[str, Tensor]:
        """One task's fields in its :class:`LocalFrame`, the test points padded to ``n_test``."""
        ctx = {role: values[context].double().numpy() for role, values in self.columns.items()}
        tst = {role: values[test].double().numpy() for role, values in self.columns.items()}
        framed_values = self.likelihood == "gaussian"  # others model the data's units
        frame = LocalFrame.fit(ctx["s"], ctx["f"] if framed_values else None,
                               self.half_width, self.value_moments)
        ctx["s"], tst["s"] = frame.space(ctx["s"]), frame.space(tst["s"])
        if framed_values:
            ctx["f"], tst["f"] = frame.values(ctx["f"]), frame.values(tst["f"])
        fields = {f"{role}_ctx": torch.as_tensor(value, dtype=torch.float32)
                  for role, value in ctx.items()}
        pad = n_test - len(test)
        for role, value in tst.items():
            value = torch.as_tensor(value, dtype=torch.float32)
            fields[f"{role}_test"] = torch.cat([value, value[:1].expand(pad, -1)])
        fields["mask_test"] = torch.arange(n_test) < len(test)
        return fields


def rows_by_field(rows: Tensor, codes: Tensor) -> list[Tensor]:
    """``rows`` split by their field ``codes``, with one sort (O(N log N)).

    One tensor per distinct code, in increasing code order, each holding its rows in the
    order of ``rows``.
    """
    order = torch.argsort(codes, stable=True)
    _, counts = torch.unique_consecutive(codes[order], return_counts=True)
    return list(rows[order].split(counts.tolist()))


_FIELDS = ("x_ctx", "s_ctx", "t_ctx", "f_ctx", "offset_ctx", "mask_ctx", "x_test", "s_test",
           "t_test", "f_test", "offset_test", "mask_test")


def _sizes(n_rows: int, n_ctx: int, n_test: int) -> tuple[int, int]:
    """Context and test sizes that fit in ``n_rows`` (scaled down in proportion)."""
    if n_ctx + n_test <= n_rows:
        return n_ctx, n_test
    share = n_ctx / (n_ctx + n_test)
    ctx = min(n_rows - 1, max(1, round(n_rows * share)))
    return ctx, n_rows - ctx
