"""Role-typed batches: the one input format every model, task and metric speaks.

A neural-process batch holds a *context* set (observed points) and a *test* set (points
to predict). Each point carries up to four roles:

* ``x`` fixed effects ``[B, L, Dx]`` (covariates such as elevation),
* ``s`` location ``[B, L, Ds]`` (e.g. planar coordinates or lon/lat in degrees),
* ``t`` time ``[B, L, Dt]``,
* ``f`` values ``[B, L, Df]`` (observations; optional for the test set),

and, for likelihoods that read one, an ``offset [B, L, Df]``: the exposure of a count
(its mean is rate × exposure) or the number of trials of a binomial (``None``: 1).

``mask_ctx [B, Lc]`` marks valid context slots (``True`` = observed, ``False`` = padding)
and ``mask_test [B, Lt]`` marks test points that count in losses and metrics. Padded
slots may hold anything, including NaN: :meth:`Batch.validate` only checks valid slots and
:meth:`Batch.sanitized` overwrites padding with zeros so it can never leak.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

ROLES = ("x", "s", "t")
"""Input roles that describe *where/when/under which covariates* a point lies."""


@dataclass(frozen=True)
class Batch:
    """A batch of neural-process tasks with role-typed context and test sets.

    Attributes:
        s_ctx: Context locations ``[B, Lc, Ds]`` or ``None``.
        f_ctx: Context values ``[B, Lc, Df]`` (required).
        mask_ctx: Valid context slots ``[B, Lc]`` (bool); ``None`` means all valid.
        s_test: Test locations ``[B, Lt, Ds]`` or ``None``.
        f_test: Test values ``[B, Lt, Df]``; only needed for losses and metrics.
        mask_test: Test points that count in losses/metrics ``[B, Lt]``; ``None`` = all.
        x_ctx: Context fixed effects ``[B, Lc, Dx]`` or ``None``.
        x_test: Test fixed effects ``[B, Lt, Dx]`` or ``None``.
        t_ctx: Context times ``[B, Lc, Dt]`` or ``None``.
        t_test: Test times ``[B, Lt, Dt]`` or ``None``.
        offset_ctx: Context exposures or trials ``[B, Lc, Df]`` (positive) or ``None`` (1).
        offset_test: Test exposures or trials ``[B, Lt, Df]`` (positive) or ``None`` (1).
    """

    f_ctx: Tensor
    s_ctx: Tensor | None = None
    mask_ctx: Tensor | None = None
    s_test: Tensor | None = None
    f_test: Tensor | None = None
    mask_test: Tensor | None = None
    x_ctx: Tensor | None = None
    x_test: Tensor | None = None
    t_ctx: Tensor | None = None
    t_test: Tensor | None = None
    offset_ctx: Tensor | None = None
    offset_test: Tensor | None = None

    # ------------------------------------------------------------------ shapes
    @property
    def batch_size(self) -> int:
        """Number of tasks ``B``."""
        return self.f_ctx.shape[0]

    @property
    def n_ctx(self) -> int:
        """Number of context slots ``Lc`` (valid and padded)."""
        return self.f_ctx.shape[1]

    @property
    def n_test(self) -> int:
        """Number of test points ``Lt``."""
        ref = self._first_test_tensor()
        return 0 if ref is None else ref.shape[1]

    def _first_test_tensor(self) -> Tensor | None:
        for name in ("s_test", "t_test", "x_test", "f_test"):
            value = getattr(self, name)
            if value is not None:
                return value
        return None

    def ctx(self, role: str) -> Tensor | None:
        """Context tensor of ``role`` (one of ``x``, ``s``, ``t``, ``f``)."""
        return getattr(self, f"{role}_ctx")

    def test(self, role: str) -> Tensor | None:
        """Test tensor of ``role`` (one of ``x``, ``s``, ``t``, ``f``)."""
        return getattr(self, f"{role}_test")

    def context_mask(self) -> Tensor:
        """Valid context slots ``[B, Lc]`` (bool), all ``True`` when no mask was given."""
        if self.mask_ctx is None:
            return torch.ones(self.f_ctx.shape[:2], dtype=torch.bool, device=self.f_ctx.device)
        return self.mask_ctx

    def test_mask(self) -> Tensor:
        """Test points that count ``[B, Lt]`` (bool), all ``True`` when no mask was given."""
        ref = self._first_test_tensor()
        if ref is None:
            raise ValueError("batch has no test tensors (s_test, t_test, x_test or f_test)")
        if self.mask_test is None:
            return torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device)
        return self.mask_test

    # -------------------------------------------------------------- transforms
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Batch:
        """Move every tensor to ``device``; cast floating tensors to ``dtype`` if given."""
        out = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                out[field.name] = None
                continue
            cast = dtype if (dtype is not None and value.is_floating_point()) else None
            out[field.name] = value.to(device=device, dtype=cast)
        return Batch(**out)

    def map(self, **updates: Tensor | None) -> Batch:
        """Return a copy with some fields replaced."""
        return replace(self, **updates)

    def sanitized(self) -> Batch:
        """Copy with padded context slots (and masked test targets) zeroed.

        Padding can then never leak into a computation, whatever it held (NaN, 1e4, ...).
        """
        keep = self.context_mask()[..., None]
        updates: dict[str, Tensor | None] = {}
        for role in (*ROLES, "f"):
            value = self.ctx(role)
            if value is not None:
                updates[f"{role}_ctx"] = torch.where(keep, value, torch.zeros_like(value))
        if self.f_test is not None and self.mask_test is not None:
            updates["f_test"] = torch.where(
                self.mask_test[..., None], self.f_test, torch.zeros_like(self.f_test)
            )
        if self.offset_ctx is not None:  # padding's offset is 1: its logarithm is 0
            updates["offset_ctx"] = torch.where(keep, self.offset_ctx,
                                                torch.ones_like(self.offset_ctx))
        if self.offset_test is not None and self.mask_test is not None:
            updates["offset_test"] = torch.where(self.mask_test[..., None], self.offset_test,
                                                 torch.ones_like(self.offset_test))
        return replace(self, **updates)

    # -------------------------------------------------------------- validation
    def validate(self, required_roles: tuple[str, ...] = (), need_f_test: bool = False) -> None:
        """Check shapes, dtypes and values; raise ``ValueError`` naming the bad argument.

        Args:
            required_roles: Roles (``x``, ``s``, ``t``) the model needs in both sets.
            need_f_test: Whether ``f_test`` must be present (losses and metrics).

        Raises:
            ValueError: On mismatched batch sizes, lengths or feature dims, non-boolean
                masks, NaN/inf in valid slots, missing roles, or no valid context.
        """
        _check_tensor("f_ctx", self.f_ctx, 3)
        B, Lc = self.f_ctx.shape[:2]
        if B == 0:
            raise ValueError("f_ctx has batch size 0: a batch needs at least one task")
        mask_ctx = self.context_mask()
        _check_mask("mask_ctx", mask_ctx, (B, Lc))
        if not bool(mask_ctx.any(dim=1).all()):
            empty = (~mask_ctx.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"mask_ctx: task(s) {empty} have no valid context point; a neural process "
                "needs at least one observation per task"
            )
        if need_f_test and self.f_test is None:
            raise ValueError("f_test is required here (loss/metrics) but is None")
        ref = self._first_test_tensor()
        if ref is None:
            raise ValueError("batch has no test tensors: give at least one of s_test/t_test/x_test")
        _check_tensor(_name_of(self, ref), ref, 3)
        Lt = ref.shape[1]
        if ref.shape[0] != B:
            raise ValueError(
                f"{_name_of(self, ref)}: batch size {ref.shape[0]} != f_ctx batch size {B}"
            )
        mask_test = self.test_mask()
        _check_mask("mask_test", mask_test, (B, Lt))
        for role in (*ROLES, "f"):
            c, t = self.ctx(role), self.test(role)
            if role in required_roles and (c is None or t is None):
                missing = f"{role}_ctx" if c is None else f"{role}_test"
                raise ValueError(f"{missing} is required by this model (role '{role}') but is None")
            if role != "f" and (c is None) != (t is None):
                missing = f"{role}_ctx" if c is None else f"{role}_test"
                raise ValueError(
                    f"{missing} is None but its counterpart is given: roles must match"
                )
            if c is not None:
                _check_tensor(f"{role}_ctx", c, 3)
                _check_leading(f"{role}_ctx", c, (B, Lc))
                _check_finite(f"{role}_ctx", c, mask_ctx)
            if t is not None:
                _check_tensor(f"{role}_test", t, 3)
                _check_leading(f"{role}_test", t, (B, Lt))
                _check_finite(f"{role}_test", t, mask_test if role == "f" else None,
                              where="in a valid slot" if role == "f" else
                              "(test inputs must be finite, masked test points too)")
            if c is not None and t is not None and c.shape[-1] != t.shape[-1]:
                raise ValueError(
                    f"{role}_ctx has {c.shape[-1]} features but {role}_test has {t.shape[-1]}"
                )
        for which, mask, length in (("ctx", mask_ctx, Lc), ("test", mask_test, Lt)):
            offset = getattr(self, f"offset_{which}")
            if offset is None:
                continue
            name = f"offset_{which}"
            _check_tensor(name, offset, 3)
            _check_leading(name, offset, (B, length))
            values = self.f_ctx if which == "ctx" else self.f_test
            if values is not None and offset.shape[-1] != values.shape[-1]:
                raise ValueError(f"{name} has {offset.shape[-1]} features but f_{which} has "
                                 f"{values.shape[-1]}: one offset per value")
            _check_finite(name, offset, mask)
            bad = (offset <= 0).any(dim=-1) & mask
            if bool(bad.any()):
                raise ValueError(f"{name} must be positive (an exposure or a number of "
                                 f"trials) in a valid slot; first at [b, i] = "
                                 f"{bad.nonzero()[0].tolist()}")


def _name_of(batch: Batch, tensor: Tensor) -> str:
    for field in fields(batch):
        if getattr(batch, field.name) is tensor:
            return field.name
    return "tensor"


def _check_tensor(name: str, value: object, ndim: int) -> None:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims [B, L, D], got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")


def _check_leading(name: str, value: Tensor, leading: tuple[int, int]) -> None:
    if tuple(value.shape[:2]) != leading:
        raise ValueError(
            f"{name} has leading shape {tuple(value.shape[:2])}, expected [B, L] = {leading}"
        )


def _check_mask(name: str, mask: Tensor, shape: tuple[int, int]) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape}")


def _check_finite(name: str, value: Tensor, mask: Tensor | None,
                  where: str = "in a valid slot") -> None:
    bad = ~torch.isfinite(value).all(dim=-1)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        index = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf {where} (first at [b, i] = {index})")
