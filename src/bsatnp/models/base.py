"""Plumbing shared by the models whose tokens read locations and values only.

TNP-D, TE-TNP and ConvCNP take context ``(s, f)`` and test ``s`` (other roles are
ignored); their configs are flat frozen dataclasses of plain values.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from bsatnp.batch import Batch

C = TypeVar("C", bound="PlainConfig")


class PlainConfig:
    """Mixin for a frozen config dataclass of plain fields: JSON round trip.

    Tuple-valued fields come back from JSON as lists and are turned into tuples again.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse of :meth:`from_dict`)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: On a key that is not a field, or an invalid value.
        """
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replaced(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied (validated like :meth:`from_dict`)."""
        return type(self).from_dict({**self.to_dict(), **overrides})


class LocationModel(nn.Module):
    """Base class: checks that a batch has locations and values of the configured widths.

    Subclasses name their config dataclass in ``config_class`` (with ``dim_s`` and
    ``dim_f`` fields), call ``super().__init__(config, overrides)`` and implement
    ``forward`` returning a distribution with ``mean``/``stddev`` ``[B, Lt, Df]``.

    Args:
        config: Model configuration (default: ``config_class()``).
        overrides: Fields of the configuration to change.
    """

    config_class: ClassVar[type[PlainConfig]]

    def __init__(self, config: PlainConfig | None, overrides: dict[str, Any]) -> None:
        super().__init__()
        config = config or self.config_class()
        self.config: Any = config.replaced(**overrides) if overrides else config

    def check_batch(self, batch: Batch) -> None:
        """Raise ``ValueError`` if ``batch`` does not fit this model (shapes, roles, values)."""
        if not isinstance(batch, Batch):
            raise ValueError(f"batch must be a bsatnp.Batch, got {type(batch).__name__}")
        batch.validate(required_roles=("s",))
        for name, got, want in (
            ("s_ctx", batch.s_ctx.shape[-1], self.config.dim_s),
            ("f_ctx", batch.f_ctx.shape[-1], self.config.dim_f),
        ):
            if got != want:
                raise ValueError(
                    f"{name} has {got} features but the model was built with "
                    f"dim_{name[0]}={want}"
                )

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Predictive mean and standard deviation ``[B, Lt, Df]`` without gradients."""
        dist = self(batch)
        return dist.mean, dist.stddev
