"""A grid predicted block by block: lazily (a dask-backed Dataset) or straight into netCDF.

A grid larger than memory (or one spread over a Dask cluster) is predicted the way climate
users compute anything else: ``xarray.map_blocks`` calls the in-memory prediction on each
block of the targets, so a block needs only its own targets and, under local conditioning,
their neighbourhoods; nothing runs until the result is computed or written (e.g.
``to_netcdf`` or ``to_zarr`` block by block). :func:`write_by_block` does the same without
dask for one netCDF file (the CLI's ``--grid ... --output x.nc``): each block is written
into the file's variables as soon as it is predicted, with no task graph held (a grid of
10⁷ points in blocks of 10⁴ is a graph of about 35 MiB).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bsatnp.data.geo import require
from bsatnp.progress import tqdm_class

CARRIER = "_bsatnp_block"
"""Name of the all-zero dask variable that gives a coordinate-only grid its blocks."""


def is_dask_backed(data: Any) -> bool:
    """Whether an xarray object holds any dask array."""
    arrays = data.data_vars.values() if hasattr(data, "data_vars") else [data]
    return any(getattr(array, "chunks", None) is not None for array in arrays)


def blocks_of(sizes: Mapping[str, int], points: int) -> dict[str, int]:
    """Block sizes holding at most ``points`` grid points (the first dimension outermost).

    Dimensions are split from the first on: one index at a time while the later ones alone
    hold more than ``points``, then as many indices as fit, the later ones whole.
    """
    chunks = {}
    rest = 1
    for size in sizes.values():
        rest *= size
    for dim, size in sizes.items():
        rest //= size
        if rest <= points:
            chunks[dim] = max(1, min(size, points // max(rest, 1)))
            break
        chunks[dim] = 1
    return chunks


def predict_lazily(predict: Callable[[Any], Any], targets: Any, dims: Sequence[str],
                   chunks: Mapping[str, int] | None) -> Any:
    """The lazy result of ``predict`` over the blocks of ``targets``.

    Args:
        predict: The in-memory prediction of one block (an xarray object in, the Dataset
            of :meth:`~bsatnp.conditioned.Conditioned.predict` out).
        targets: An xarray Dataset or DataArray: dask-backed, or any grid with ``chunks``.
        dims: The grid's dimensions (those its target coordinates span).
        chunks: Block sizes by dimension (``None``: the targets' own chunks).

    Raises:
        ValueError: If ``chunks`` names a dimension the grid does not have.
    """
    xr = require("xarray", "lazy predictions")
    dask_array = require("dask.array", "lazy predictions")
    array = isinstance(targets, xr.DataArray)  # blocks go back to a DataArray, as given
    data = targets.to_dataset(name="targets") if array else targets
    if chunks is not None:
        unknown = sorted(set(chunks) - set(dims))
        if unknown:
            raise ValueError(f"chunks names {unknown}, which the targets' grid does not span "
                             f"(its dimensions: {list(dims)})")
        shape = tuple(data.sizes[dim] for dim in dims)
        blocks = tuple(chunks.get(dim, -1) for dim in dims)
        data = data.chunk(dict(chunks)).assign(
            {CARRIER: (tuple(dims), dask_array.zeros(shape, chunks=blocks, dtype="int8"))})

    def block(part: Any) -> Any:
        part = part.drop_vars(CARRIER, errors="ignore")
        return predict((part["targets"].rename(targets.name) if array else part).compute())

    probe = block(data.isel({dim: slice(0, 1) for dim in dims}))
    variables = {}
    for name, variable in probe.data_vars.items():
        shape = tuple(data.sizes[d] if d in dims else variable.sizes[d] for d in variable.dims)
        blocks = tuple(data.chunks[d] if d in dims and d in data.chunks else -1
                       for d in variable.dims)
        variables[name] = (variable.dims, dask_array.zeros(shape, chunks=blocks,
                                                           dtype=variable.dtype),
                           variable.attrs)
    coords = {name: coord for name, coord in probe.coords.items()
              if not set(coord.dims) & set(dims)}
    coords.update({name: coord for name, coord in data.coords.items()
                   if set(coord.dims) <= set(dims)})
    template = xr.Dataset(variables, coords=coords, attrs=probe.attrs)
    return xr.map_blocks(block, data, template=template)


def write_by_block(predict: Callable[[Any], Any], targets: Any, dims: Sequence[str],
                   chunks: Mapping[str, int], path: Path, progress: bool = False) -> None:
    """Predict the grid ``targets`` block by block into a new netCDF4 file at ``path``.

    The file holds what ``predict`` returns for the whole grid (its variables, their
    attributes, the grid's coordinates and the outputs' own, e.g. ``quantile``), read back
    by ``xarray.open_dataset`` as the in-memory prediction would have been written.

    Args:
        predict: The in-memory prediction of one block (as for :func:`predict_lazily`).
        targets: An xarray Dataset or DataArray grid.
        dims: The grid's dimensions.
        chunks: Block sizes by dimension (a dimension not named is whole in every block).
        path: The file to create (the caller makes the write atomic).
        progress: Show a progress bar over blocks.
    """
    xr = require("xarray", "writing a grid block by block")
    h5netcdf = require("h5netcdf", "writing a grid block by block")
    array = isinstance(targets, xr.DataArray)
    data = targets.to_dataset(name="targets") if array else targets
    sizes = {dim: data.sizes[dim] for dim in dims}
    total = math.prod(-(-size // chunks.get(dim, size)) for dim, size in sizes.items())
    with h5netcdf.File(path, "w") as file, tqdm_class()(
            total=total, unit="block", disable=not progress) as bar:
        for number, region in enumerate(_regions(sizes, chunks)):
            part = data.isel(region)
            block = predict(part["targets"].rename(targets.name) if array else part)
            if number == 0:
                _lay_out(file, block, data, dims)
            for name, variable in block.data_vars.items():
                index = tuple(region.get(dim, slice(None)) for dim in variable.dims)
                file.variables[name][index] = _stored(variable.values)
            bar.update(1)


def _regions(sizes: Mapping[str, int], chunks: Mapping[str, int]) -> Iterator[dict[str, slice]]:
    """The blocks of a grid as index slices, the first dimension outermost."""
    ranges = [[(dim, slice(start, min(start + chunks.get(dim, size), size)))
               for start in range(0, size, chunks.get(dim, size))]
              for dim, size in sizes.items()]
    for combination in itertools.product(*ranges):
        yield dict(combination)


def _lay_out(file: Any, block: Any, data: Any, dims: Sequence[str]) -> None:
    """Dimensions, coordinates and empty variables of the whole grid's output in ``file``."""
    file.dimensions.update({dim: data.sizes[dim] if dim in dims else block.sizes[dim]
                            for dim in block.dims})
    coords = {name: coord for name, coord in data.coords.items()
              if set(coord.dims) <= set(dims)}
    coords.update({name: coord for name, coord in block.coords.items()
                   if not set(coord.dims) & set(dims)})
    for name, coord in coords.items():
        values = _stored(coord.values)
        file.create_variable(name, coord.dims, _dtype(values), data=values).attrs.update(
            coord.attrs)
    for name, variable in block.data_vars.items():  # contiguous: no chunk padding at edges
        created = file.create_variable(name, variable.dims,
                                       _dtype(_stored(variable.values[:0])))
        created.attrs.update(variable.attrs)
    file.attrs.update(block.attrs)


def _stored(values: Any) -> Any:
    """``values`` as HDF5 stores them (text as variable-length strings)."""
    return values.astype(object) if values.dtype.kind == "U" else values


def _dtype(values: Any) -> Any:
    """The HDF5 type of stored ``values`` (variable-length strings for text)."""
    return require("h5py", "writing a grid block by block").string_dtype() \
        if values.dtype.kind == "O" else values.dtype
