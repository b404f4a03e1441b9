"""The normaliser: user units ↔ model units, fitted on data and saved with the model.

Model inputs are affine maps of the user's columns, computed in float64 before the
float32 cast, so coordinates such as UTM metres or datetimes keep their precision (and
translation-invariant models stay exactly invariant)::

    s_model = (P(s) − space_shift) / space_scale     P: optional projection (pyproj)
    t_model = (t − time_shift) / time_scale          t in seconds since 1970 for datetimes
    x_model = (x − covariate_shift) / covariate_scale
    f_model = (T(f) − value_shift) / value_scale     T: none, log or log1p
    offset_model = offset / offset_scale             exposures; trials are not scaled

The value map gives the fitted data the moments of one training task's context
(:class:`ValueMoments`, from the model card: mean 0 and std 1 unless the card says
otherwise, e.g. mean 6 for the Gneiting model).

On the way out a Gaussian ``N(μ, σ)`` in model units becomes ``N(μ·scale + shift,
σ·scale)`` in ``T``-space (the std is scaled, never shifted); quantiles and samples pass
through ``T⁻¹`` exactly, and exceedance probabilities ``P(f > t)`` through ``T`` (``T`` is
increasing: ``P(T(f) > T(t))``); under ``log`` the mean and std are those of the log-normal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np
import torch

from bsatnp.config import Config, check_literals
from bsatnp.data.geo import local_projection, transform
from bsatnp.data.schema import LONLAT, Schema
from bsatnp.data.tables import Points
from bsatnp.tasks.frames import OffsetCentre, ValueMoments

ValueTransform = Literal["none", "log", "log1p"]
TRANSFORMS: tuple[str, ...] = get_args(ValueTransform)
METHODS = ("standard", "minmax")
_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "D": 86400.0, "W": 604800.0}


@dataclass(frozen=True)
class Normalizer(Config):
    """Per-column affine maps between user and model units (module doc).

    Attributes:
        value_shift: Subtracted from ``T(f)``, one per value column.
        value_scale: Divides ``T(f) − shift``, one per value column.
        value_transform: ``none``, ``log`` or ``log1p`` applied before the shift.
        space_shift: Subtracted from each (projected) space axis.
        space_scale: User (or projected) length units per model unit, per axis.
        projection: CRS the space columns are converted to first (e.g. a local
            azimuthal-equidistant projection in km, or ``lonlat``), or ``None``.
        time_shift: Subtracted from the time (seconds since 1970 for datetimes).
        time_scale: Time units per model unit (seconds for datetimes).
        covariate_shift: Subtracted from each covariate.
        covariate_scale: Divides each shifted covariate.
        offset_scale: Divides each exposure (fitted to put the data's rates and exposures
            where the model's training contexts had them, or their geometric mean over the
            fitted points); 1 for a binomial's trials.
    """

    value_shift: tuple[float, ...] = (0.0,)
    value_scale: tuple[float, ...] = (1.0,)
    value_transform: ValueTransform = "none"
    space_shift: tuple[float, ...] = ()
    space_scale: tuple[float, ...] = ()
    projection: str | None = None
    time_shift: float = 0.0
    time_scale: float = 1.0
    covariate_shift: tuple[float, ...] = ()
    covariate_scale: tuple[float, ...] = ()
    offset_scale: float = 1.0

    def __post_init__(self) -> None:
        check_literals(self)
        for name in ("value_scale", "space_scale", "covariate_scale"):
            if not all(math.isfinite(v) and v > 0 for v in getattr(self, name)):
                raise ValueError(f"Normalizer.{name} must be finite and > 0, got "
                                 f"{getattr(self, name)}")
        for name in ("time_scale", "offset_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"Normalizer.{name} must be finite and > 0, got "
                                 f"{getattr(self, name)}")

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, points: Points, schema: Schema, *, great_circle: bool = False,
            space_scale: float | str = "auto", time_scale: float | str = "auto",
            method: str = "standard", value_transform: str = "none",
            space_half_width: float = 2.0, value_moments: ValueMoments | None = None,
            keep_values: bool = False, scale_offset: bool = True,
            offset_centre: OffsetCentre | None = None) -> Normalizer:
        """Fit the maps on ``points`` (the data a model is trained or conditioned on).

        Args:
            points: Points read with values (:func:`~bsatnp.data.tables.read_points`).
            schema: Their roles.
            great_circle: Whether the model measures space by great-circle distance on
                (lon, lat) degrees (then longitude and latitude pass unscaled).
            space_scale: ``"auto"`` (one scale for every axis that maps the data's
                half-extent onto ``space_half_width``), ``"per_axis"`` (each axis by
                ``method``) or a number (user/projected length units per model unit; km
                for geographic data read by a Euclidean model).
            time_scale: ``"auto"`` (by ``method``), a number (time units per model unit,
                seconds for datetimes) or a duration such as ``"6h"`` or ``"1D"``.
            method: ``standard`` (mean, std) or ``minmax`` (min, range) for the values,
                covariates and ``per_axis``/``auto`` time.
            value_transform: ``none``, ``log`` or ``log1p`` before the value shift.
            space_half_width: Half-width of the box the model was trained on.
            value_moments: What the model's training contexts' values look like (the
                fitted values are mapped onto them; ``None``: mean 0, std 1).
            keep_values: Leave the values in their units (a likelihood of counts, presence
                or proportions models them so), as class labels are.
            scale_offset: Scale the points' offsets (exposures); ``False`` leaves them (a
                binomial's trials are counts).
            offset_centre: Where the model's training contexts sit: the exposures are
                scaled to put the data's rate and exposures between them
                (:meth:`OffsetCentre.scale`); ``None``: exposures of geometric mean 1.

        Raises:
            ValueError: On an unknown option, or values outside ``T``'s domain.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        fields: dict[str, object] = {"value_transform": value_transform}
        if keep_values and value_transform != "none":
            raise ValueError("keep_values leaves the values as they are: no value_transform")
        if points.values is not None and not schema.classes and not keep_values:
            transformed = _forward(points.values, value_transform, schema.values)
            shift, scale = _affine(transformed, method)
            if value_moments is not None:
                shift, scale = (tuple(float(v) for v in array) for array in value_moments.onto(
                    np.asarray(shift), np.asarray(scale)))
            fields["value_shift"], fields["value_scale"] = shift, scale
        elif schema.classes:
            fields["value_shift"], fields["value_scale"] = (0.0,), (1.0,)
        elif points.values is not None:  # keep_values
            width = points.values.shape[1]
            fields["value_shift"], fields["value_scale"] = (0.0,) * width, (1.0,) * width
        if points.space is not None:
            fields.update(_fit_space(points.space, schema, great_circle, space_scale,
                                     method, space_half_width))
        if points.time is not None:
            shift, scale = _affine(points.time[:, None], method)
            fields["time_shift"] = shift[0]
            fields["time_scale"] = (scale[0] if time_scale == "auto"
                                    else parse_duration(time_scale, schema.time_kind))
        if points.covariates is not None:
            fields["covariate_shift"], fields["covariate_scale"] = _affine(points.covariates,
                                                                           method)
        if points.offset is not None and scale_offset:
            log_offset = float(np.log(points.offset).mean())
            if offset_centre is None:
                fields["offset_scale"] = math.exp(log_offset)
            else:
                total = float(points.values.sum()) if points.values is not None else 0.0
                log_rate = math.log(total / float(points.offset.sum())) if total > 0 else None
                fields["offset_scale"] = offset_centre.scale(log_rate, log_offset)
        return cls(**fields)

    # ------------------------------------------------------------- user → model
    def space(self, space: np.ndarray, crs: str | None) -> np.ndarray:
        """Model locations ``[N, Ds]`` (float64) of user locations in CRS ``crs``."""
        if self.projection is not None:
            space = transform(space, crs or LONLAT, self.projection)
        return (space - np.asarray(self.space_shift)) / np.asarray(self.space_scale)

    def time(self, time: np.ndarray) -> np.ndarray:
        """Model times ``[N, 1]`` (float64)."""
        return ((time - self.time_shift) / self.time_scale)[:, None]

    def covariates(self, covariates: np.ndarray) -> np.ndarray:
        """Model covariates ``[N, Dx]`` (float64)."""
        return (covariates - np.asarray(self.covariate_shift)) / np.asarray(self.covariate_scale)

    def values(self, values: np.ndarray, schema: Schema) -> np.ndarray:
        """Model values ``[N, Df]``: scaled values, or one-hot class indicators."""
        if schema.classes:
            return np.eye(len(schema.classes))[values[:, 0].astype(np.int64)]
        transformed = _forward(values, self.value_transform, schema.values)
        return (transformed - np.asarray(self.value_shift)) / np.asarray(self.value_scale)

    def inputs(self, points: Points, schema: Schema) -> dict[str, np.ndarray]:
        """Model arrays by role (``s``, ``t``, ``x`` and ``f`` when present), float64."""
        out = {}
        if points.space is not None:
            out["s"] = self.space(points.space, schema.crs)
        if points.time is not None:
            out["t"] = self.time(points.time)
        if points.covariates is not None:
            out["x"] = self.covariates(points.covariates)
        if points.values is not None:
            out["f"] = self.values(points.values, schema)
        if points.offset is not None:
            out["offset"] = points.offset / self.offset_scale
        return out

    # ------------------------------------------------------------- model → user
    def gaussian(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(loc, scale)`` ``[N, Dv]`` in ``T``-space of a model-unit Normal ``[N, Dv]``."""
        shift, scale = np.asarray(self.value_shift), np.asarray(self.value_scale)
        return mean * scale + shift, std * scale

    def moments(self, loc: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std in user units of ``T⁻¹(N(loc, scale²))``."""
        if self.value_transform == "none":
            return loc, scale
        var = scale**2
        mean = np.exp(loc + var / 2)
        std = np.sqrt(np.expm1(var)) * mean
        return (mean - 1.0 if self.value_transform == "log1p" else mean), std

    def quantile(self, loc: np.ndarray, scale: np.ndarray, level: float) -> np.ndarray:
        """Quantile at probability ``level`` in user units (exact through ``T⁻¹``)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"quantile levels must be in (0, 1), got {level}")
        return self.inverse(loc + scale * NormalDist().inv_cdf(level))

    def exceedance(self, loc: np.ndarray, scale: np.ndarray, threshold: float) -> np.ndarray:
        """``P(f > threshold)``, ``threshold`` in user units (exact through ``T``).

        ``T`` is increasing, so ``P(f > t) = P(T(f) > T(t)) = Φ((loc − T(t)) / scale)`` for
        the Normal ``N(loc, scale²)`` in ``T``-space (:meth:`gaussian`). A threshold outside
        ``T``'s domain (``t <= 0`` under ``log``, ``t <= −1`` under ``log1p``) lies below
        every value the predictive can take: its probability is 1.
        """
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"exceedance thresholds must be finite, got {threshold}")
        floor = {"log": 0.0, "log1p": -1.0}.get(self.value_transform)
        if floor is not None and threshold <= floor:
            return np.ones(np.shape(loc))
        level = float(_forward(np.float64(threshold), self.value_transform, ("threshold",)))
        z = torch.as_tensor((np.asarray(loc, np.float64) - level) / scale, dtype=torch.float64)
        return torch.special.ndtr(z).numpy()

    def inverse(self, transformed: np.ndarray) -> np.ndarray:
        """``T⁻¹``: values in ``T``-space (e.g. samples) back to user units."""
        if self.value_transform == "log":
            return np.exp(transformed)
        if self.value_transform == "log1p":
            return np.expm1(transformed)
        return transformed

    def describe(self) -> str:
        """Multi-line summary of the maps."""
        value = {"none": "f", "log": "log(f)", "log1p": "log1p(f)"}[self.value_transform]
        lines = [f"values: ({value} − {_fmt(self.value_shift)}) / {_fmt(self.value_scale)}"]
        if self.space_scale:
            projection = f" after projecting to {self.projection}" if self.projection else ""
            lines.append(f"space: (s − {_fmt(self.space_shift)}) / {_fmt(self.space_scale)}"
                         f"{projection}")
        if self.time_scale != 1.0 or self.time_shift:
            lines.append(f"time: (t − {self.time_shift:.6g}) / {self.time_scale:.6g}")
        if self.covariate_scale:
            lines.append(f"covariates: (x − {_fmt(self.covariate_shift)}) / "
                         f"{_fmt(self.covariate_scale)}")
        if self.offset_scale != 1.0:
            lines.append(f"exposure: e / {self.offset_scale:.6g}")
        return "\n".join(lines)


def parse_duration(value: float | str, time_kind: str, name: str = "time_scale",
                   zero: bool = False) -> float:
    """Time units: a number, or for datetimes a duration such as ``"6h"`` (in seconds).

    Args:
        value: The number or duration.
        time_kind: The schema's ``time_kind`` (durations need ``"datetime"``).
        name: The option, for messages.
        zero: Accept 0.

    Raises:
        ValueError: On a negative (or, without ``zero``, zero) number or an unknown unit.
    """
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*(s|min|h|D|W)\s*", value)
        if match is None or time_kind != "datetime":
            raise ValueError(f"{name} {value!r}: give a number, or for datetime times a "
                             f"duration like '6h' (units: {', '.join(_SECONDS)})")
        value = float(match.group(1)) * _SECONDS[match.group(2)]
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        raise ValueError(f"{name} must be {'>= 0' if zero else '> 0'}, got {value}")
    return value


def _fit_space(space: np.ndarray, schema: Schema, great_circle: bool, space_scale: float | str,
               method: str, half_width: float) -> dict[str, object]:
    dims = space.shape[1]
    if great_circle:
        if schema.crs is None:
            raise ValueError("this model measures great-circle distances on (lon, lat) in "
                             "degrees: declare the data's crs (e.g. crs='lonlat')")
        if space_scale not in ("auto", 1, 1.0):
            raise ValueError("a great-circle model reads lon/lat degrees unscaled; leave "
                             "space_scale='auto'")
        projection = None if schema.geographic else LONLAT
        return {"projection": projection, "space_shift": (0.0,) * dims,
                "space_scale": (1.0,) * dims}
    projection = local_projection(space) if schema.geographic else None
    if projection is not None:
        space = transform(space, LONLAT, projection)
    if space_scale == "per_axis":
        shift, scale = _affine(space, method)
        return {"projection": projection, "space_shift": shift, "space_scale": scale}
    lo, hi = space.min(0), space.max(0)
    shift = tuple(float(v) for v in (lo + hi) / 2)
    if space_scale == "auto":
        extent = float((hi - lo).max()) / 2
        scale = extent / half_width if extent > 0 else 1.0
    elif isinstance(space_scale, (int, float)) and not isinstance(space_scale, bool):
        scale = float(space_scale)
    else:
        raise ValueError(f"space_scale must be 'auto', 'per_axis' or a number, got "
                         f"{space_scale!r}")
    return {"projection": projection, "space_shift": shift, "space_scale": (scale,) * dims}


def _affine(columns: np.ndarray, method: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-column shift and scale (a constant column gets scale 1)."""
    if method == "standard":
        shift, scale = np.nanmean(columns, 0), np.nanstd(columns, 0)
    else:
        shift = np.nanmin(columns, 0)
        scale = np.nanmax(columns, 0) - shift
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return tuple(float(v) for v in shift), tuple(float(v) for v in scale)


def _forward(values: np.ndarray, transform_name: str, names: tuple[str, ...]) -> np.ndarray:
    """``T(values)``; raises ``ValueError`` naming the column if outside ``T``'s domain."""
    if transform_name == "none":
        return values
    floor = 0.0 if transform_name == "log" else -1.0
    bad = values <= floor
    if bad.any():
        column = int(np.argwhere(bad)[0][1])
        raise ValueError(f"value_transform={transform_name!r} needs values > {floor:g}, but "
                         f"column {names[column]!r} has {values[bad].min():g}")
    return np.log(values) if transform_name == "log" else np.log1p(values)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
