"""User containers in and out: pandas DataFrames, xarray Datasets/DataArrays, mappings.

:func:`read_points` reads the columns a :class:`~bsatnp.data.schema.Schema` names into
:class:`Points` (float64, the user's units) and keeps a :class:`Template` of the container;
:meth:`Template.build` writes per-point outputs back into the same kind of container with
the original index or coordinates (copied, never recomputed).

Rules for bad input: a missing column, NaN/inf coordinates, NaN covariates at targets, or
an unknown class label raise ``ValueError`` naming the column and the row; observations
whose value or covariate is NaN are dropped with one warning that counts them.
"""

from __future__ import annotations

import datetime
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bsatnp.data.geo import check_lonlat, require, same_crs, transform
from bsatnp.data.schema import Schema

SOURCE_ATTR = "bsatnp_source"
"""``DataFrame.attrs`` key of the file a table was read from (:func:`~bsatnp.data.files.
read_table`): messages then name the file and its data rows counted from 1."""


@dataclass(frozen=True)
class Points:
    """Points in the user's units (float64), one row per point.

    Attributes:
        label: Row label of point ``i`` for messages (index value or coordinates).
        space: Locations ``[N, Ds]`` in the schema's CRS, or ``None``.
        time: Times ``[N]`` (seconds since 1970-01-01 for datetimes), or ``None``.
        covariates: Covariates ``[N, Dx]``, or ``None``.
        values: Values ``[N, Dv]`` (Gaussian) or class indices ``[N, 1]`` (categorical),
            or ``None`` for targets.
        time_zone: Whether the times were timezone-aware (converted to UTC).
        groups: The field each point belongs to, as codes ``[N]`` (``read_points(group=)``),
            or ``None``.
        offset: Exposures or trials ``[N, 1]`` (``Schema.offset``), positive, or ``None``.
    """

    label: Callable[[int], str]
    space: np.ndarray | None
    time: np.ndarray | None
    covariates: np.ndarray | None
    values: np.ndarray | None
    time_zone: bool = False
    groups: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of points."""
        for array in (self.space, self.time, self.covariates, self.values):
            if array is not None:
                return len(array)
        return 0

    def take(self, rows: np.ndarray) -> Points:
        """The points at ``rows`` (indices or a boolean mask)."""
        index = np.arange(self.n)[rows]
        pick = {name: None if getattr(self, name) is None else getattr(self, name)[rows]
                for name in ("space", "time", "covariates", "values", "groups", "offset")}
        return replace(self, label=lambda i: self.label(int(index[i])), **pick)


@dataclass(frozen=True)
class Template:
    """How to build an output like the targets.

    Attributes:
        data: The targets as given.
        kind: ``"pandas"``, ``"xarray"`` or ``"mapping"``.
        dims: Dimensions of the broadcast target grid (xarray).
        shape: Its shape (xarray); ``(N,)`` otherwise.
    """

    data: Any
    kind: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]

    def build(self, outputs: Mapping[str, np.ndarray],
              extra_dims: Mapping[str, tuple[str, Sequence[Any], str]],
              attrs: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
        """Per-point outputs in the container type of the targets.

        Args:
            outputs: ``name → [N]`` arrays, or ``[K, N]`` for names in ``extra_dims``.
            extra_dims: ``name → (dim, labels, stem)`` of the leading axis of ``[K, N]``
                outputs: the xarray dimension, its labels and the stem of the DataFrame
                columns ``<stem><label>`` (e.g. ``"quantiles" → ("quantile", (0.05, 0.95),
                "q")`` gives columns ``q0.05`` and ``q0.95``).
            attrs: Attributes of xarray output variables by name.

        Returns:
            A DataFrame (the targets with added columns ``name`` or ``name_label``), an
            ``xarray.Dataset`` (the targets' coordinates, variables over their dims), or a
            dict of arrays.
        """
        attrs = attrs or {}
        if self.kind == "pandas":
            frame = self.data.copy()
            frame.attrs.pop(SOURCE_ATTR, None)  # not written into the output file
            new = {}
            for name, array in outputs.items():
                if name in extra_dims:
                    _, labels, stem = extra_dims[name]
                    for label, row in zip(labels, array):
                        new[f"{stem}{label}"] = row
                else:
                    new[name] = array
            clash = sorted(set(new) & set(frame.columns))
            if clash:
                raise ValueError(f"targets already have column(s) {clash}; rename them")
            pd = require("pandas", "DataFrame output")
            return pd.concat([frame, pd.DataFrame(new, index=frame.index)], axis=1)
        if self.kind == "xarray":
            xr = require("xarray", "xarray output")
            variables = {}
            for name, array in outputs.items():
                if name in extra_dims:
                    dim, labels, _ = extra_dims[name]
                    variables[name] = xr.Variable((dim, *self.dims),
                                                  array.reshape(len(array), *self.shape),
                                                  attrs=dict(attrs.get(name, {})))
                else:
                    variables[name] = xr.Variable(self.dims, array.reshape(self.shape),
                                                  attrs=dict(attrs.get(name, {})))
            coords = {dim: list(labels) for dim, labels, _ in extra_dims.values()}
            kept = dict(getattr(self.data, "data_vars", {}))  # the targets' own variables
            clash = sorted(set(map(str, kept)) & set(variables))
            if clash:
                raise ValueError(f"targets already have variable(s) {clash}; rename them")
            out = xr.Dataset({**kept, **variables}, coords=self.data.coords)
            return out.assign_coords(coords) if coords else out
        return {name: np.asarray(array) for name, array in outputs.items()}

    def table(self) -> Template:
        """This template with one row per point: xarray targets become a DataFrame.

        Its columns are the grid's coordinates and the targets' variables over the grid's
        dims (broadcast to every point, in the order the points are read); a variable or
        coordinate over another dimension has no one value per point and is left out with
        a warning naming it and the dimension. Other kinds are returned as they are.
        """
        if self.kind != "xarray":
            return self
        xr = require("xarray", "xarray targets")
        data = (self.data if hasattr(self.data, "data_vars")
                else xr.Dataset(coords=self.data.coords))
        other = [str(dim) for dim in data.dims if dim not in self.dims]
        if other:
            names = sorted(str(name) for name, variable in data.variables.items()
                           if set(map(str, variable.dims)) & set(other))
            warnings.warn(f"targets: {names} span dimension(s) {other}, not only the targets' "
                          f"({', '.join(self.dims)}): left out of the table of one row per "
                          "target; write .nc to keep them", stacklevel=4)
            data = data.drop_dims(other)
        frame = data.to_dataframe(dim_order=list(self.dims)).reset_index()
        return Template(frame, "pandas", (), (len(frame),))


def is_xarray(data: Any) -> bool:
    """Whether ``data`` is an xarray Dataset or DataArray (without importing xarray)."""
    return type(data).__module__.split(".")[0] == "xarray"


def is_pandas(data: Any) -> bool:
    """Whether ``data`` is a pandas DataFrame (without importing pandas)."""
    return type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns")


def read_points(data: Any, schema: Schema, what: str, with_values: bool,
                crs: str | None = None, group: str | None = None) -> tuple[Points, Template]:
    """Read the schema's columns of ``data``.

    Args:
        data: A pandas DataFrame, an xarray Dataset or DataArray (names are variables or
            coordinates; dimensions broadcast in any order) or a mapping of 1D arrays.
        schema: The roles; covariates and the time are read when the schema names them.
        what: ``"observations"`` or ``"targets"`` (for messages).
        with_values: Whether to read (and clean) the value columns.
        crs: CRS of ``data``'s space columns if it differs from ``schema.crs``; they are
            converted (pyproj). An xarray object's ``crs`` attribute is read when not given.
        group: A column naming the field each point belongs to (a date, say): read into
            ``Points.groups`` as codes.

    Returns:
        The points and the template of the container.

    Raises:
        ValueError: On a missing column, empty data, NaN/inf coordinates or covariates at
            targets, latitudes out of range, or unknown class labels.
    """
    names = list(schema.space) + ([schema.time] if schema.time else []) + list(schema.covariates)
    if schema.offset:
        names.append(schema.offset)
    if with_values:
        names += list(schema.values)
    if group is not None:
        names.append(group)
    columns, template, label = _columns(data, names, what)
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        raise ValueError(f"{what} are empty: no rows (points) to read")
    if crs is None and template.kind == "xarray":
        crs = data.attrs.get("crs")
    space = None
    if schema.space:
        space = np.stack([_numeric(columns[name], name, what, label) for name in schema.space],
                         -1)
        _check_finite_coords(space, schema.space, label, what)
        if crs is not None and not same_crs(crs, schema.crs):
            if schema.crs is None:
                raise ValueError(f"{what} are in CRS {crs!r} but the model's data had plain "
                                 "coordinates (no crs); give both or neither")
            space = transform(space, crs, schema.crs)
        if schema.geographic:
            check_lonlat(space, schema.space, label)
    time, time_zone = None, False
    if schema.time:
        time, time_zone = _times(columns[schema.time], schema, what, label)
        bad = ~np.isfinite(time)
        if bad.any():  # a blank cell, NaN or NaT reads as NaN
            row = int(np.argmax(bad))
            state = "empty" if np.isnan(time[row]) else time[row]
            raise ValueError(f"{what}: time column {schema.time!r} is {state} at {label(row)}; "
                             "every point needs a time")
    covariates = None
    if schema.covariates:
        covariates = np.stack([_numeric(columns[name], name, what, label)
                               for name in schema.covariates], -1)
    values = None
    if with_values:
        values = (_class_indices(columns[schema.values[0]], schema, what) if schema.classes
                  else np.stack([_numeric(columns[name], name, what, label)
                                 for name in schema.values], -1))
    groups = None
    if group is not None:
        labels = columns[group]
        groups = np.unique(labels.astype(str) if labels.dtype.kind == "O" else labels,
                           return_inverse=True)[1].reshape(-1)
    offset = None
    if schema.offset:
        offset = _numeric(columns[schema.offset], schema.offset, what, label)[:, None]
        with np.errstate(invalid="ignore"):
            good = np.isfinite(offset[:, 0]) & (offset[:, 0] > 0)
        bad = ~good & ~(np.isnan(offset[:, 0]) if with_values else False)
        if bad.any():  # a missing observation's offset drops it; elsewhere it must be > 0
            row = int(np.argmax(bad))
            raise ValueError(f"{what}: column {schema.offset!r} (exposure or trials) is "
                             f"{offset[row, 0]} at {label(row)}; it must be positive")
    points = Points(label, space, time, covariates, values, time_zone, groups, offset)
    if with_values:
        points = _drop_missing(points, schema, what)
    elif covariates is not None:
        bad = ~np.isfinite(covariates)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"{what}: covariate {schema.covariates[col]!r} is "
                             f"{covariates[row, col]} at {label(int(row))}; targets need "
                             "every covariate")
    return points, template


def _columns(data: Any, names: list[str], what: str
             ) -> tuple[dict[str, np.ndarray], Template, Callable[[int], str]]:
    """Flat columns ``[N]`` by name, the template, and a row-label function."""
    if is_pandas(data):
        labels = {str(column): column for column in data.columns}  # names are strings
        missing = [name for name in names if name not in labels]
        if missing:
            raise ValueError(f"{what}: no column(s) {missing}; the columns are "
                             f"{list(labels)}")
        return ({name: data[labels[name]].to_numpy() for name in names},
                Template(data, "pandas", (), (len(data),)),
                _row_label(data.index, data.attrs.get(SOURCE_ATTR)))
    if is_xarray(data):
        xr = require("xarray", "reading xarray data")
        available = _xarray_names(data)
        missing = [name for name in names if name not in available]
        if missing:
            raise ValueError(f"{what}: no variable or coordinate(s) {missing}; found "
                             f"{sorted(available)}")
        arrays = [_xarray_get(data, name) for name in names]
        if not arrays:
            raise ValueError(f"{what}: the schema names no column to read")
        arrays = list(xr.broadcast(*arrays))
        dims = _dims_in_order(data, arrays[0].dims)
        arrays = [a.transpose(*dims) for a in arrays]
        shape = arrays[0].shape
        coords = {dim: data[dim].values if dim in data.coords else None for dim in dims}

        def label(i: int) -> str:
            position = np.unravel_index(i, shape)
            return "point " + ", ".join(
                f"{dim}={coords[dim][p] if coords[dim] is not None else p}"
                for dim, p in zip(dims, position))

        return ({name: a.values.reshape(-1) for name, a in zip(names, arrays)},
                Template(data, "xarray", tuple(dims), tuple(shape)), label)
    if isinstance(data, Mapping):
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"{what}: no array(s) {missing}; found {sorted(map(str, data))}")
        columns = {name: np.asarray(data[name]).reshape(-1) for name in names}
        lengths = {name: len(c) for name, c in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{what}: arrays have different lengths {lengths}")
        n = next(iter(lengths.values()), 0)
        return columns, Template(data, "mapping", (), (n,)), _row_label(None, None)
    raise ValueError(f"{what} must be a pandas DataFrame, an xarray Dataset/DataArray or a "
                     f"mapping of arrays, got {type(data).__name__}")


def _row_label(index: Any, source: str | None) -> Callable[[int], str]:
    """How messages name row ``i`` of a table (a DataFrame or a mapping of arrays).

    A table read from a file (``source``) without index labels of the user's: ``data row
    N of FILE``, counted from 1; rows with no index at all (``index=None``, a mapping):
    ``row N (counting from 1)``; otherwise the row's index label, ``index L`` (what
    ``DataFrame.loc[L]`` finds), since a position counted from 0 or 1 would be ambiguous.
    """
    if source is not None and (index is None or _is_default_index(index)):
        return lambda i: f"data row {i + 1} of {source}"
    if index is None:
        return lambda i: f"row {i + 1} (counting from 1)"
    return lambda i: f"index {index[i]!r}"


def _is_default_index(index: Any) -> bool:
    """Whether a pandas index is the positions 0, 1, 2, ... (no labels of the user's)."""
    return (type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1)


def available_memory() -> int | None:
    """Bytes of physical memory available now (Linux; ``None`` where unknown)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resident_memory() -> int:
    """Bytes this process holds in physical memory now (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def count_targets(data: Any, schema: Schema) -> int:
    """How many points ``data`` holds for ``schema``, without reading them.

    An xarray grid counts the product of the sizes of the dimensions its named coordinates
    span; anything else its length (0 when it has none).
    """
    if is_xarray(data):
        dims = grid_dims(data, schema)
        return int(np.prod([data.sizes[dim] for dim in dims])) if dims else 0
    try:
        return len(data) if not isinstance(data, Mapping) else len(
            np.asarray(next(iter(data.values()))).reshape(-1))
    except (TypeError, StopIteration):
        return 0


def grid_dims(data: Any, schema: Schema) -> tuple[str, ...]:
    """The dimensions an xarray grid's target coordinates span, in the data's order."""
    names = list(schema.space) + ([schema.time] if schema.time else []) + list(schema.covariates)
    available = _xarray_names(data)
    dims = {dim for name in names if name in available for dim in _xarray_get(data, name).dims}
    return _dims_in_order(data, tuple(sorted(dims)))


def _dims_in_order(data: Any, dims: Sequence[str]) -> tuple[str, ...]:
    """``dims`` in the order the data give them (their first variable's, else their own)."""
    variables = list(getattr(data, "data_vars", {}).values())
    given = list(variables[0].dims) if variables else list(data.dims)
    return tuple([d for d in given if d in dims] + [d for d in dims if d not in given])


def _xarray_names(data: Any) -> set[str]:
    names = {str(name) for name in data.coords}
    if hasattr(data, "data_vars"):
        names |= {str(name) for name in data.data_vars}
    elif data.name is not None:
        names.add(str(data.name))
    return names


def _xarray_get(data: Any, name: str) -> Any:
    if not hasattr(data, "data_vars") and data.name == name:
        return data
    return data[name]


def _numeric(column: np.ndarray, name: str, what: str, label: Callable[[int], str]
             ) -> np.ndarray:
    """The column as float64; ``ValueError`` naming the first entry that is not a number."""
    try:
        return np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    for i, item in enumerate(column):
        try:
            float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: column {name!r} must be numeric, but holds {item!r} at "
                             f"{label(i)}") from None
    raise ValueError(f"{what}: column {name!r} must be numeric, got {column.dtype}")


def _times(column: np.ndarray, schema: Schema, what: str, label: Callable[[int], str]
           ) -> tuple[np.ndarray, bool]:
    """Times as float64 and whether they carried a timezone.

    Datetimes become seconds since 1970 (UTC; NaT → NaN), numbers are kept as given.
    """
    kind = column.dtype.kind
    if kind in "iuf":
        if schema.time_kind == "datetime":
            raise ValueError(f"{what}: time column {schema.time!r} holds numbers but the model "
                             "was fitted on datetimes")
        return column.astype(np.float64), False
    if kind in "MOU":
        if schema.time_kind == "number":
            raise ValueError(f"{what}: time column {schema.time!r} holds {column.dtype} values "
                             "but the model was fitted on numbers")
        stamps, aware = _datetimes(column, schema.time, what, label)
        seconds = stamps.astype(np.int64) / 1e6
        return np.where(np.isnat(stamps), np.nan, seconds), aware
    raise ValueError(f"{what}: time column {schema.time!r} must be numeric or datetime64, "
                     f"got {column.dtype}")


_ZONE = re.compile(r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$")
"""The end of a time of day with a zone: ``10:00Z``, ``10:00:00+01:00``, ``10:00 UTC``."""


def _datetimes(column: np.ndarray, name: str, what: str, label: Callable[[int], str]
               ) -> tuple[np.ndarray, bool]:
    """``datetime64[us]`` (UTC) and whether the times carried a zone (then converted).

    The column holds datetime64 values, datetimes or text. Microseconds span ±290,000
    years, so no date wraps (nanoseconds end in 1677 and 2262).
    Times with a zone and times without one in the same column are refused (they would be
    hours apart), as is an entry that is not a date and time: both name the row.
    """
    if column.dtype.kind == "M":
        return column.astype("datetime64[us]"), False
    values = column.astype(object)
    present, aware = np.zeros(len(values), bool), np.zeros(len(values), bool)
    for i, value in enumerate(values):
        if isinstance(value, str):
            present[i] = bool(value.strip())
            aware[i] = present[i] and _ZONE.search(value.strip()) is not None
        elif isinstance(value, (datetime.date, np.datetime64)):
            present[i] = not np.isnat(np.datetime64(value, "us")) if isinstance(
                value, np.datetime64) else value == value  # NaT != NaT
            aware[i] = present[i] and getattr(value, "tzinfo", None) is not None
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        else:
            raise ValueError(f"{what}: time column {name!r} holds {value!r} at {label(i)}, "
                             "which is not a date and time")
    naive = present & ~aware
    if aware.any() and naive.any():
        first_aware, first_naive = int(np.argmax(aware)), int(np.argmax(naive))
        raise ValueError(f"{what}: time column {name!r} mixes times with a timezone "
                         f"({values[first_aware]!r} at {label(first_aware)}) and without one "
                         f"({values[first_naive]!r} at {label(first_naive)}): give every time "
                         "its zone, or none")
    items = [value if ok else None for value, ok in zip(values, present)]
    if not aware.any():
        try:  # ISO text and naive datetimes, any year
            return np.asarray(items, dtype="datetime64[us]"), False
        except (TypeError, ValueError, OverflowError):
            pass
    pd = require("pandas", "reading times with a timezone or in other formats")
    for form in (None, "mixed"):  # one inferred format, then each entry its own
        try:
            stamps = pd.to_datetime(pd.Series(items, dtype=object), utc=bool(aware.any()),
                                    format=form)
        except (TypeError, ValueError, OverflowError):
            continue
        if aware.any():
            stamps = stamps.dt.tz_localize(None)
        return np.asarray(stamps.to_numpy(), dtype="datetime64[us]"), bool(aware.any())
    for i, value in enumerate(items):  # find the entry that cannot be read
        if value is None:
            continue
        try:
            pd.Timestamp(value)
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{what}: time column {name!r} holds {value!r} at {label(i)}, "
                             f"which is not a date and time ({err})") from None
    raise ValueError(f"{what}: time column {name!r}: its entries are not one kind of date and "
                     "time")


def time_kind_of(data: Any, schema: Schema) -> str:
    """``"datetime"`` or ``"number"``: the kind of the data's time column.

    Anything but numbers is read as datetimes (an entry that is not one is refused by
    :func:`read_points`, naming its row).
    """
    columns, _, _ = _columns(data, [schema.time], "observations")
    column = columns[schema.time]
    if column.dtype.kind in "iuf":
        return "number"
    if column.dtype.kind not in "MOU":
        raise ValueError(f"time column {schema.time!r} must be numeric or datetime64, got "
                         f"{column.dtype}")
    return "datetime"


def class_labels(data: Any, schema: Schema) -> tuple[str, ...]:
    """Sorted distinct labels of the (single) value column, as strings; missing ones skipped."""
    columns, _, _ = _columns(data, [schema.values[0]], "observations")
    column = columns[schema.values[0]]
    present = [v for v in column if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return tuple(sorted({str(v) for v in present}))


def _class_indices(column: np.ndarray, schema: Schema, what: str) -> np.ndarray:
    """Class indices ``[N, 1]`` (float, NaN for a missing label) from labels."""
    lookup = {label: i for i, label in enumerate(schema.classes)}
    out = np.full((len(column), 1), np.nan)
    for i, value in enumerate(column):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        key = str(value)
        if key not in lookup:
            raise ValueError(f"{what}: class {key!r} in column {schema.values[0]!r} is not one "
                             f"of the model's classes {schema.classes}")
        out[i, 0] = lookup[key]
    return out


def _check_finite_coords(coords: np.ndarray, names: Sequence[str], label: Callable[[int], str],
                         what: str) -> None:
    bad = ~np.isfinite(coords)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{what}: coordinate column {names[col]!r} is {coords[row, col]} at "
                         f"{label(int(row))}; every point needs a finite location and time")


def _drop_missing(points: Points, schema: Schema, what: str) -> Points:
    """Drop points whose value or covariate is NaN, with a warning that counts them."""
    values = points.values
    if np.isinf(values).any():
        row, col = np.argwhere(np.isinf(values))[0]
        raise ValueError(f"{what}: value column {schema.values[col]!r} is "
                         f"{values[row, col]} at {points.label(int(row))}")
    missing_value = np.isnan(values).any(-1)
    missing_covariate = (np.zeros_like(missing_value) if points.covariates is None
                         else ~np.isfinite(points.covariates).all(-1))
    if points.offset is not None:  # a count without its exposure is as good as missing
        missing_covariate = missing_covariate | np.isnan(points.offset[:, 0])
    drop = missing_value | missing_covariate
    if drop.all():
        raise ValueError(f"{what}: all {len(drop)} points have a missing value or covariate; "
                         "nothing to condition on")
    if drop.any():
        warnings.warn(
            f"{what}: dropped {int(drop.sum())} of {len(drop)} points with a missing value "
            f"({int(missing_value.sum())}) or covariate or exposure "
            f"({int(missing_covariate.sum())})",
            stacklevel=3,
        )
        return points.take(~drop)
    return points


def grid(**axes: tuple[float, float, int] | Sequence[Any] | np.ndarray) -> Any:
    """An xarray Dataset of target coordinates (no variables): the outer product of axes.

    Args:
        **axes: ``name=(start, stop, n)`` for ``n`` evenly spaced values including both
            ends, or explicit values (numbers or datetimes), e.g.
            ``grid(lon=(115.9, 117.1, 241), lat=(39.6, 40.5, 181))``.

    Raises:
        ValueError: On an empty axis or a malformed ``(start, stop, n)``.
    """
    xr = require("xarray", "grids")
    coords = {}
    for name, spec in axes.items():
        if (isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], int)
                and not isinstance(spec[2], bool)):
            start, stop, n = spec
            if n < 1:
                raise ValueError(f"grid axis {name!r}: need at least one point, got n={n}")
            values = np.linspace(float(start), float(stop), n)
        else:
            values = np.asarray(spec)
            if values.ndim != 1 or values.size == 0:
                raise ValueError(f"grid axis {name!r}: give (start, stop, n) or a 1D sequence")
        coords[name] = values
    return xr.Dataset(coords=coords)
