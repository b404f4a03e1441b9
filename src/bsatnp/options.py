"""What a prediction is asked for, and the memory it may use.

The checks of the requested outputs (quantile levels, an interval, exceedance thresholds,
options that mean nothing for class probabilities) and the sizing of the work (targets per
forward pass and per block from ``chunk_size``/``max_memory``, refusing what cannot fit),
shared by :class:`~bsatnp.conditioned.Conditioned` and the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsatnp.data.tables import available_memory
from bsatnp.models.base import NeuralProcess

DEFAULT_CHUNK = 16384
"""Targets per chunk when neither ``chunk_size`` nor ``max_memory`` is given."""


@dataclass(frozen=True)
class OutputRequest:
    """What a prediction returns besides mean and std (each checked when read).

    Attributes:
        levels: Quantile levels in (0, 1).
        interval: Mass of the central interval (``lower``/``upper``), or ``None``.
        thresholds: Exceedance thresholds in the values' units.
        n_samples: Marginal samples per target.
        seed: Seed of the samples.
    """

    levels: tuple[float, ...] = ()
    interval: float | None = None
    thresholds: tuple[float, ...] = ()
    n_samples: int = 0
    seed: int | None = None


def refuse_numeric_options(model: NeuralProcess, given: Mapping[str, Any]) -> None:
    """Refuse options of a numeric value for a model of class probabilities.

    Units, a value transform, quantiles, intervals, exceedance probabilities, samples and
    their seed mean nothing for class probabilities. ``given`` maps each option's name (the
    API's or the CLI's) to whether it was given.

    Raises:
        ValueError: Naming the given ones, if the model is categorical.
    """
    named = [name for name, value in given.items() if value]
    if model.likelihood == "categorical" and named:
        raise ValueError(f"{', '.join(named)}: only for a model of numeric values; this model "
                         f"predicts class probabilities (omit {'them' if named[1:] else 'it'})")


def check_fits_in_memory(n_targets: int, per_target: int) -> None:
    """Refuse targets whose inputs and outputs would not fit in the memory available."""
    available = available_memory()
    needed = n_targets * per_target
    if available is not None and needed > available:
        raise ValueError(f"{n_targets:,} targets with these outputs need about "
                         f"{needed / 2**30:.1f} GiB in memory ({per_target} bytes each) but "
                         f"{available / 2**30:.1f} GiB are available: predict fewer targets "
                         "at a time (a coarser grid, or pieces), or fewer samples")


def output_levels(quantiles: Sequence[float], interval: float | None) -> list[float]:
    """Quantile levels as floats; ``ValueError`` on a level or interval outside (0, 1)."""
    levels = [float(q) for q in quantiles]
    for q in levels:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantiles must lie in (0, 1), got {q}")
    if interval is not None and not 0.0 < interval < 1.0:
        raise ValueError(f"interval must lie in (0, 1), e.g. 0.9, got {interval}")
    return levels


def output_thresholds(exceedance: Sequence[float] | float) -> list[float]:
    """Exceedance thresholds as floats; ``ValueError`` on one that is not a finite number."""
    given = ([exceedance] if isinstance(exceedance, (int, float, np.number, str))
             else exceedance)
    thresholds = []
    for t in given:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.number)) \
                or not math.isfinite(t):
            raise ValueError(f"exceedance thresholds must be finite numbers in the values' "
                             f"units, e.g. (75.0,), got {t!r}")
        thresholds.append(float(t))
    return thresholds


def interval_levels(interval: float | None) -> tuple[float, ...]:
    """The quantile levels of a central interval's bounds (none without one)."""
    if interval is None:
        return ()
    return ((1.0 - interval) / 2, (1.0 + interval) / 2)


def chunk_size_for(chunk_size: int | None, max_memory: int | str | None,
                model: NeuralProcess) -> int:
    """Targets per forward pass from an explicit size or a memory bound."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return chunk_size
    if max_memory is None:
        return DEFAULT_CHUNK
    budget = parse_bytes(max_memory)
    per_target = model.bytes_per_target
    if budget < 64 * per_target:
        raise ValueError(f"max_memory={max_memory!r} is too small: a chunk of 64 targets "
                         f"needs about {64 * per_target / 2**20:.1f} MiB")
    return int(budget // per_target)


BLOCK_BYTES_PER_TARGET = 512
"""What a target of a lazy block holds while the block is computed (inputs in float64,
outputs, their xarray copies): far less than a forward pass's working memory."""


def block_points(chunk_size: int | None, max_memory: int | str | None,
                  model: NeuralProcess) -> int:
    """Targets of a lazy block (``chunks="auto"``).

    The memory a chunk of forward passes may use, held by finished outputs instead (a block
    is predicted chunk by chunk), so that a grid of 10⁷ points is a few hundred blocks, not
    tens of thousands (each a task in dask's graph). An explicit ``chunk_size`` is kept.
    """
    chunk = chunk_size_for(chunk_size, max_memory, model)
    if chunk_size is not None:
        return chunk
    return max(chunk, chunk * model.bytes_per_target // BLOCK_BYTES_PER_TARGET)


def parse_bytes(value: int | str) -> int:
    """``2_000_000``, ``"512MB"``, ``"2GB"``, ``"1.5GiB"`` → bytes.

    Raises:
        ValueError: On an unreadable or non-positive size.
    """
    if isinstance(value, int) and value > 0:
        return value
    units = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}
    text = str(value).strip().upper()
    number = text.rstrip("KMGIB ")
    unit = text[len(number):].strip()
    try:
        size = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"max_memory must be bytes or a size like '2GB', got {value!r}") from None
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(size)
