"""Frames: how a neighbourhood of observations is mapped onto what a model was trained on.

Local conditioning (:mod:`bsatnp.data.neighbours`) and the training tasks shaped like it
(the ``spatial`` task, the user's ``gap`` fine-tuning tasks) frame each context the same
way, so these live with the tasks, below the user's data layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bsatnp.config import Config


@dataclass(frozen=True)
class ValueMoments(Config):
    """How the values of a model's training contexts are distributed (card ``envelope``).

    Attributes:
        mean: Average per-task context mean, one per value column (or one for all).
        std: Root of the average per-task context variance, likewise.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need the same length >= 1, got "
                             f"{self.mean} and {self.std}")
        if not all(math.isfinite(v) for v in self.mean) or not all(
                math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean must be finite and std finite and > 0, got "
                             f"{self.mean} and {self.std}")

    def onto(self, shift: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shift and scale that map data standardised by ``(shift, scale)`` onto these.

        ``(f − shift') / scale' = (f − shift) / scale · std + mean``.
        """
        scale = np.asarray(scale, dtype=np.float64) / np.asarray(self.std)
        return np.asarray(shift, dtype=np.float64) - np.asarray(self.mean) * scale, scale


@dataclass(frozen=True)
class OffsetCentre(Config):
    """Where a count model's training contexts sit (card ``envelope.offsets``).

    A count's model-unit exposure is ``e / scale``: a larger ``scale`` raises the rates the
    model sees and lowers the exposures, so one scale cannot centre both; :meth:`scale`
    takes the geometric middle of the two centring scales.

    Attributes:
        log_rate: Average log rate ``log(Σ f / Σ offset)`` of a training context.
        log_offset: Average mean log exposure of a training context.
    """

    log_rate: float = 0.0
    log_offset: float = 0.0

    def scale(self, log_rate: float | None, log_offset: float) -> float:
        """The exposure scale for data of rate ``exp(log_rate)`` and mean log exposure.

        ``log_rate`` ``None`` (no counts at all): centre the exposures alone.
        """
        by_offset = log_offset - self.log_offset
        if log_rate is None:
            return math.exp(by_offset)
        return math.exp((by_offset + self.log_rate - log_rate) / 2)


@dataclass(frozen=True)
class LocalFrame:
    """The map of one neighbourhood onto what a model was trained on.

    ``s_local = (s − centre) · factor`` puts the context's bounding box on
    ``[−half_width, half_width]`` (one factor for every axis, from the longest half-extent:
    the rule of ``Normalizer.fit(space_scale="auto")``); ``f_local = (f − shift) / scale``
    gives the context's values mean 0 and standard deviation 1 (or the ``moments`` the
    model was trained on). A neighbourhood in one place (or of one value) keeps factor
    (scale) 1.

    Attributes:
        centre: ``[Ds]``.
        factor: Model units per input unit of space.
        shift: ``[Df]`` (zeros when the values are not framed).
        scale: ``[Df]`` (ones likewise).
    """

    centre: np.ndarray
    factor: float
    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, space: np.ndarray, values: np.ndarray | None, half_width: float,
            moments: ValueMoments | None = None) -> LocalFrame:
        """The frame of a context with locations ``space`` ``[N, Ds]`` and ``values``.

        ``values=None`` (class labels, say) leaves the values as they are.
        """
        lo, hi = space.min(0), space.max(0)
        extent = float((hi - lo).max()) / 2
        factor = half_width / extent if extent > 0 and math.isfinite(extent) else 1.0
        if values is None:
            return cls((lo + hi) / 2, factor, np.zeros(1), np.ones(1))
        scale = values.std(0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        shift = values.mean(0)
        if moments is not None:
            shift, scale = moments.onto(shift, scale)
        return cls((lo + hi) / 2, factor, shift, scale)

    def space(self, space: np.ndarray) -> np.ndarray:
        """Framed locations."""
        return (space - self.centre) * self.factor

    def values(self, values: np.ndarray) -> np.ndarray:
        """Framed values."""
        return (values - self.shift) / self.scale
