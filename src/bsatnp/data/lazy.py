"""Lazy predictions on a grid: a dask-backed Dataset computed block by block.

A grid larger than memory (or one spread over a Dask cluster) is predicted the way climate
users compute anything else: ``xarray.map_blocks`` calls the in-memory prediction on each
block of the targets, so a block needs only its own targets and, under local conditioning,
their neighbourhoods; nothing runs until the result is computed or written (e.g.
``to_netcdf`` or ``to_zarr`` block by block).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bsatnp.data.geo import require

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
            of :meth:`~bsatnp.predictor.Conditioned.predict` out).
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
