"""Coordinate reference systems: checks of lon/lat and conversions through pyproj (extra)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from bsatnp.data.schema import LONLAT

EXTRAS = {"pandas": "data", "xarray": "data", "pyproj": "geo", "pyarrow": "data",
          "h5netcdf": "data", "dask": "dask", "dask.array": "dask"}
"""Optional dependency → the ``bsatnp[...]`` extra that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency or raise an ``ImportError`` naming its extra.

    Args:
        module: Top-level module name (``pandas``, ``xarray``, ``pyproj``, ...).
        purpose: What needs it, for the message (``"reading DataFrames"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module, "data")
        raise ImportError(f"{purpose} needs the '{module}' package: "
                          f"pip install 'bsatnp[{extra}]'") from err


def crs_name(crs: str) -> str:
    """The name pyproj understands (``"lonlat"`` → ``"EPSG:4326"``)."""
    return "EPSG:4326" if crs.strip().lower() == LONLAT else crs


def check_crs(crs: str | None, option: str) -> None:
    """Raise ``ValueError`` naming ``option`` if pyproj does not know ``crs``.

    ``None`` (plain units) and ``"lonlat"`` always pass; without pyproj nothing is checked
    (the conversion that needs it then names the extra).
    """
    if crs is None or crs.strip().lower() == LONLAT:
        return
    try:
        pyproj = importlib.import_module("pyproj")
    except ImportError:
        return
    try:
        pyproj.CRS.from_user_input(crs_name(crs))
    except pyproj.exceptions.CRSError as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{option} {crs!r} is not a coordinate reference system pyproj "
                         f"knows ({reason}); give e.g. 'lonlat' or 'EPSG:32650', or omit it "
                         "for plain units") from None


def same_crs(a: str | None, b: str | None) -> bool:
    """Whether two CRS names denote the same system (pyproj decides if both are set)."""
    if a is None or b is None:
        return a is b
    if crs_name(a).lower() == crs_name(b).lower():
        return True
    pyproj = require("pyproj", "comparing coordinate reference systems")
    return bool(pyproj.CRS.from_user_input(crs_name(a)) == pyproj.CRS.from_user_input(
        crs_name(b)))


def transform(xy: np.ndarray, source: str, target: str) -> np.ndarray:
    """Points ``[N, 2]`` (x/lon first) from CRS ``source`` to ``target`` (pyproj, float64)."""
    pyproj = require("pyproj", f"converting coordinates from {source} to {target}")
    try:
        transformer = pyproj.Transformer.from_crs(crs_name(source), crs_name(target),
                                                  always_xy=True)
    except pyproj.exceptions.CRSError as err:
        raise ValueError(f"unknown coordinate reference system: {err}") from err
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)], -1)


def local_projection(lonlat: np.ndarray) -> str:
    """An azimuthal-equidistant projection in km centred on points ``[N, 2]`` (lon, lat).

    Distances from the centre are exact and nearby ones nearly so: what a model with
    Euclidean distances needs for geographic data spanning up to a few thousand km.
    """
    lon0 = float(np.degrees(np.arctan2(np.sin(np.radians(lonlat[:, 0])).mean(),
                                       np.cos(np.radians(lonlat[:, 0])).mean())))
    lat0 = float(lonlat[:, 1].mean())
    return f"+proj=aeqd +lat_0={lat0:.6f} +lon_0={lon0:.6f} +units=km +datum=WGS84 +no_defs"


def check_lonlat(lonlat: np.ndarray, names: tuple[str, ...], label: Callable[[int], str]) -> None:
    """Raise ``ValueError`` naming the column and row of a longitude/latitude out of range.

    Args:
        lonlat: ``[N, 2]`` longitude and latitude in degrees.
        names: The two column names.
        label: Row label of point ``i`` for the message.
    """
    for axis, limit in ((1, 90.0), (0, 540.0)):
        bad = np.abs(lonlat[:, axis]) > limit
        if bad.any():
            row = int(np.argmax(bad))
            kind = "latitude" if axis else "longitude"
            raise ValueError(
                f"{kind} column {names[axis]!r} at {label(row)}: {lonlat[row, axis]:g} is "
                f"outside [-{limit:g}, {limit:g}] degrees; are these coordinates projected "
                "(give their crs) or are the lon/lat columns swapped?"
            )
