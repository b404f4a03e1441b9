"""Which columns or coordinates of the user's data play which role, and in which units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from bsatnp.config import Config, check_literals

LONLAT = "lonlat"
"""Shorthand for geographic coordinates: longitude and latitude in degrees (WGS 84)."""
_GEOGRAPHIC = {LONLAT, "epsg:4326", "wgs84", "ogc:crs84", "crs84"}
TimeKind = Literal["number", "datetime"]
TIME_KINDS: tuple[str, ...] = get_args(TimeKind)
LIKELIHOODS = ("gaussian", "categorical")


@dataclass(frozen=True)
class Schema(Config):
    """Roles of named columns (DataFrame) or variables/coordinates (xarray).

    Attributes:
        values: Value column(s) ``f``; one per output of a Gaussian model, one column of
            class labels for a categorical model.
        space: Location columns ``s`` in axis order: ``(lon, lat)`` for geographic data,
            ``(x, y)`` for projected or plain coordinates; empty for no location.
        crs: ``None`` for plain Euclidean units, ``"lonlat"`` (or ``"EPSG:4326"``) for
            longitude/latitude in degrees, or any projected CRS pyproj understands
            (``"EPSG:32650"``); targets in another CRS are converted to this one.
        time: Time column ``t`` (``datetime64`` or numbers), or ``None``.
        time_kind: ``"datetime"`` or ``"number"``, set from the data when fitted.
        covariates: Covariate columns ``x`` (fixed effects), in model order.
        classes: Class labels of a categorical model, in model order (set when fitted).
        units: Units of each value column (copied to outputs), e.g. ``("degC",)``.
        offset: The column of each point's exposure (a count model: the count's mean is
            rate × exposure, e.g. a population) or number of trials (a binomial model),
            or ``None``: 1 everywhere. With one, predictions are per unit of it (rates,
            shares of trials).
    """

    values: tuple[str, ...] = ("value",)
    space: tuple[str, ...] = ()
    crs: str | None = None
    time: str | None = None
    time_kind: TimeKind = "number"
    covariates: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    offset: str | None = None

    def __post_init__(self) -> None:
        check_literals(self)
        if not self.values:
            raise ValueError("Schema.values must name at least one value column")
        if self.geographic and len(self.space) != 2:
            raise ValueError(f"a geographic schema (crs={self.crs!r}) needs two space columns "
                             f"(lon, lat), got {self.space}")
        names = [*self.values, *self.space, *self.covariates, *([self.time] if self.time else []),
                 *([self.offset] if self.offset else [])]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"Schema: column(s) {repeated} are given more than one role")

    @property
    def geographic(self) -> bool:
        """Whether ``space`` holds longitude and latitude in degrees."""
        return self.crs is not None and self.crs.strip().lower() in _GEOGRAPHIC

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the schema reads for a point with a value."""
        time = (self.time,) if self.time else ()
        offset = (self.offset,) if self.offset else ()
        return (*self.space, *time, *self.covariates, *offset, *self.values)

    def describe(self) -> str:
        """One line naming every role, e.g. ``pm25 ~ s(lon, lat; lonlat) + t(time) + x(...)``."""
        parts = []
        if self.space:
            parts.append(f"s({', '.join(self.space)}; {self.crs or 'plain units'})")
        if self.time:
            parts.append(f"t({self.time}; {self.time_kind})")
        if self.covariates:
            parts.append(f"x({', '.join(self.covariates)})")
        classes = f" [classes: {', '.join(self.classes)}]" if self.classes else ""
        offset = f" per {self.offset}" if self.offset else ""
        return f"{', '.join(self.values)}{offset}{classes} ~ {' + '.join(parts) or '1'}"
