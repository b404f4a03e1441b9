"""Files of the user's data: CSV and Parquet (pandas), netCDF (xarray), by extension."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bsatnp.data.geo import require
from bsatnp.data.lazy import write_by_block
from bsatnp.data.tables import SOURCE_ATTR, available_memory, is_pandas, is_xarray
from bsatnp.io.files import existing_file, write_atomic

READABLE = (".csv", ".csv.gz", ".parquet", ".nc")


def read_table(path: str | os.PathLike[str], time: str | None = None) -> Any:
    """A DataFrame (``.csv``, ``.csv.gz``, ``.parquet``) or Dataset (``.nc``) from ``path``.

    Args:
        path: The file.
        time: The time column. Kept for compatibility: a CSV's times stay text here and
            are parsed where the points are read (:func:`bsatnp.data.tables.read_points`),
            which refuses a mix of zoned and naive times and names the row of an entry that
            is not a date.

    Raises:
        FileNotFoundError: If ``path`` does not exist (``IsADirectoryError``: a directory).
        ValueError: On an unknown extension or an unreadable file.
    """
    path = existing_file(path)
    name = path.name.lower()
    try:
        if name.endswith((".csv", ".csv.gz")):
            pd = require("pandas", "reading CSV files")
            header = pd.read_csv(path, encoding="utf-8-sig", header=None, nrows=1)
            names = [str(name) for name in header.iloc[0]] if len(header) else []
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"column(s) {repeated} appear more than once in the header; "
                                 "rename them so that each column is read")
            frame = pd.read_csv(path, encoding="utf-8-sig")  # times stay text (see time)
            frame.attrs[SOURCE_ATTR] = str(path)
            return frame
        if name.endswith(".parquet"):
            pd = require("pandas", "reading Parquet files")
            frame = pd.read_parquet(path)
            frame.attrs[SOURCE_ATTR] = str(path)
            return frame
        if name.endswith(".nc"):
            xr = require("xarray", "reading netCDF files")
            with xr.open_dataset(path) as dataset:
                _check_declared_size(path, dataset)
                return dataset.load()
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, ImportError):
            raise
        raise ValueError(f"{path}: cannot read it: {err}") from err
    raise ValueError(f"{path}: unsupported file type; use one of {', '.join(READABLE)}")


def _check_declared_size(path: Path, dataset: Any) -> None:
    """Refuse a netCDF file whose variables would not fit in the memory available."""
    declared = sum(int(variable.nbytes) for variable in dataset.variables.values())
    available = available_memory()
    if available is not None and declared > available:
        raise ValueError(f"its variables declare {declared / 2**30:.1f} GiB but "
                         f"{available / 2**30:.1f} GiB of memory are available; select the "
                         "variables or region you need first (xarray) and save that")


def write_table(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame or Dataset to ``.csv``, ``.parquet`` or ``.nc`` (atomically).

    A Dataset written as CSV/Parquet becomes one row per combination of all its dimensions
    (``to_dataframe``; predictions with one row per target come from
    ``Conditioned.predict(..., as_table=True)``); a DataFrame written as netCDF keeps its
    index as the dimension. A lazy (dask-backed) Dataset written as netCDF
    is computed and written block by block.

    Raises:
        ValueError: On an unknown extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".nc"):
        raise ValueError(f"{path}: unsupported output type; use .csv, .parquet or .nc")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".nc":  # written at the temp path: a lazy Dataset goes block by block
        xr = require("xarray", "writing netCDF files")
        dataset = xr.Dataset.from_dataframe(data) if is_pandas(data) else data
        _check_disk_space(path, int(dataset.nbytes))  # known before a lazy block is computed
        engine = _netcdf_engine()
        write_atomic(path, lambda at: dataset.to_netcdf(at, engine=engine))
        return path
    frame = data.to_dataframe().reset_index() if is_xarray(data) else data
    if suffix == ".csv":
        payload = frame.to_csv(index=is_pandas(data) and frame.index.name is not None)
        payload = payload.encode("utf-8")
    else:
        require("pyarrow", "writing Parquet files")
        payload = frame.to_parquet()
    write_atomic(path, bytes(payload))
    return path


def write_grid(predict: Callable[[Any], Any], targets: Any, dims: Sequence[str],
               chunks: Mapping[str, int], path: str | os.PathLike[str],
               progress: bool = False) -> Path:
    """Predict a grid block by block into a netCDF file (atomically; no dask, no task graph).

    ``predict`` maps a block of ``targets`` to its predictions; each block is written as
    soon as it is predicted (:func:`bsatnp.data.lazy.write_by_block`), so the memory used
    is one block's, whatever the grid's size.

    Raises:
        ValueError: If ``path`` is not ``.nc``, or its disk lacks the space the output needs.
    """
    path = Path(path)
    if path.suffix.lower() != ".nc":
        raise ValueError(f"{path}: a grid is written block by block to .nc only")
    xr = require("xarray", "writing a grid block by block")
    data = targets.to_dataset(name="targets") if isinstance(targets, xr.DataArray) else targets
    points = math.prod(data.sizes[dim] for dim in dims)
    probe = predict(targets.isel({dim: slice(0, 1) for dim in dims}))
    _check_disk_space(path, points * sum(int(v.nbytes) for v in probe.data_vars.values()))
    write_atomic(path, lambda at: write_by_block(predict, targets, dims, chunks, at, progress))
    return path


def _check_disk_space(path: Path, needed: int) -> None:
    """Refuse an output whose ``needed`` bytes exceed the free space of its file system."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if needed > free:
        raise ValueError(f"cannot write {path}: it needs about {needed / 2**30:,.1f} GiB but "
                         f"its disk has {free / 2**30:,.1f} GiB free; predict fewer targets "
                         "(a coarser or smaller grid) or write to another disk")


def _netcdf_engine() -> str:
    """``h5netcdf`` when it and h5py are installed (netCDF4 files), else ``scipy`` (netCDF3)."""
    try:
        import h5netcdf  # noqa: F401
        import h5py  # noqa: F401
    except ImportError:
        require("scipy", "writing netCDF files")
        return "scipy"
    return "h5netcdf"
