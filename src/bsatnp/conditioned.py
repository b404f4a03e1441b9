"""Predictions from observations encoded once.

:class:`Conditioned` (and its neighbourhood-by-neighbourhood form,
:class:`~bsatnp.locally_conditioned.LocallyConditioned`) is made by
:meth:`bsatnp.predictor.Predictor.condition`.

:meth:`Conditioned.predict` streams any number of targets through the model in chunks and
returns the container type of the targets with their coordinates copied: mean, std,
quantiles, an interval, exceedance probabilities and marginal samples in the units of the
data (class probabilities and the most likely class for a categorical model);
:meth:`Conditioned.write_grid` writes a grid block by block into netCDF.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bsatnp.attention.runtime import attention_runtime
from bsatnp.batch import Batch
from bsatnp.data.geo import check_crs
from bsatnp.data.lazy import blocks_of, is_dask_backed, predict_lazily
from bsatnp.data.normalizer import Normalizer
from bsatnp.data.schema import Schema
from bsatnp.data.tables import (
    Points,
    count_targets,
    grid_dims,
    is_xarray,
    read_points,
)
from bsatnp.likelihoods import likelihood_family
from bsatnp.models.base import ConditionedModel, model_device
from bsatnp.options import (
    OutputRequest,
    block_points,
    check_fits_in_memory,
    chunk_size_for,
    output_levels,
    output_thresholds,
    refuse_numeric_options,
)
from bsatnp.outputs import (
    DistributionStore,
    MomentStore,
    OverflowBlame,
    ProbabilityStore,
    categorical_outputs,
    distribution_outputs,
    gaussian_outputs,
    largest_finite,
)
from bsatnp.progress import tqdm_class
from bsatnp.tasks.frames import LocalFrame

if TYPE_CHECKING:
    from bsatnp.predictor import Predictor



class Conditioned:
    """A predictor conditioned on a set of observations (encoded once).

    Args:
        predictor: The predictor.
        schema: The schema of the observations.
        normalizer: The maps to model units.
        points: The observations (NaN rows dropped), in the data's units.
    """

    def __init__(self, predictor: Predictor, schema: Schema, normalizer: Normalizer,
                 points: Points) -> None:
        self.predictor, self.schema, self.normalizer = predictor, schema, normalizer
        self.n_context, self.time_zone = points.n, points.time_zone
        self.largest_value = largest_finite(points.values)
        arrays = normalizer.inputs(points, schema)
        check_normalised(arrays, points, stored=predictor.normalizer is not None)
        self.warnings = predictor.envelope_warnings(points.n, arrays)
        for message in self.warnings:
            warnings.warn(message, stacklevel=3)
        model = predictor.model
        device = model_device(model)
        tensors = {role: model_tensor(value, device) for role, value in arrays.items()}
        check_model_range(tensors, "observations")
        context = {f"{role}_ctx": tensors[role] for role in (*model.roles, "f", "offset")
                   if role in tensors}
        probe = {f"{role}_test": tensors[role][:, :1] for role in model.roles}
        self.model: ConditionedModel = model.condition(Batch(**context, **probe))
        self.device = device

    def predict(self, targets: Any, *, crs: str | None = None,
                quantiles: Sequence[float] = (), interval: float | None = None,
                exceedance: Sequence[float] | float = (), n_samples: int = 0,
                seed: int | None = None, chunk_size: int | None = None,
                max_memory: int | str | None = None, progress: bool = False,
                chunks: Mapping[str, int] | str | None = None, as_table: bool = False) -> Any:
        """Predictions at ``targets`` in the container type of the targets.

        Args:
            targets: DataFrame (rows), xarray Dataset/DataArray (its coordinates broadcast
                to a grid; covariates as variables) or mapping of 1D arrays.
            crs: CRS of the targets if not the schema's (converted; xarray objects may
                carry it in a ``crs`` attribute).
            quantiles: Probability levels, e.g. ``(0.05, 0.5, 0.95)``.
            interval: Central interval mass, e.g. ``0.9`` adds ``lower`` and ``upper``.
            exceedance: Thresholds in the values' units, e.g. ``(75.0,)``: the probability
                ``P(value > threshold)`` at each target, computed in model units through
                the normaliser and the value transform (a threshold outside the transform's
                domain, e.g. ``<= 0`` under ``log``, is exceeded with probability 1).
            n_samples: Marginal samples per target (independent across targets).
            seed: Seed of the samples.
            chunk_size: Targets per forward pass (default from ``max_memory``, else 16,384).
            max_memory: Bound on the working memory of a chunk, bytes or ``"2GB"``; with a
                bound, bias profiles run eagerly (no compiler loaded mid-run,
                :func:`bsatnp.attention.runtime.attention_runtime` with ``compile="never"``).
            progress: Show a progress bar over chunks.
            chunks: xarray targets only: block sizes by grid dimension (e.g.
                ``{"lat": 256}``), or ``"auto"`` (blocks of the chunk size that
                ``chunk_size``/``max_memory`` give); the result is then a lazy dask-backed
                Dataset computed block by block (:mod:`bsatnp.data.lazy`), as it is for
                dask-backed targets. Marginal samples are not drawn lazily.
            as_table: xarray targets only: a DataFrame with one row per target (as for
                DataFrame targets) instead of a Dataset: the grid's coordinates and the
                targets' variables over its dims as columns (those over another dimension
                are left out with a warning), ``q<level>``, ``exceedance_<threshold>``,
                ``sample_<i>`` and ``probability_<class>`` columns. CSV and Parquet outputs
                are made so.

        Returns:
            DataFrame: the targets with columns ``mean``, ``std``, ``q<level>``,
            ``lower``, ``upper``, ``exceedance_<threshold>``, ``sample_<i>`` (prefixed
            ``<value>_`` for several values); categorical: ``probability_<class>`` and
            ``predicted_class``.
            xarray: a Dataset with the targets' coordinates and variables ``mean``,
            ``std``, ``quantiles (quantile, ...)``, ``lower``, ``upper``,
            ``exceedance (threshold, ...)``, ``samples (sample, ...)`` over the targets'
            dimensions; categorical: ``probability (class, ...)`` and ``predicted_class``.
            Mapping: a dict of arrays.

        Raises:
            ValueError: On bad targets or options; nothing is computed then.
        """
        levels = output_levels(quantiles, interval)  # checked before any work
        thresholds = output_thresholds(exceedance)
        check_crs(crs, "crs")
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
                or n_samples < 0:
            raise ValueError(f"n_samples must be an integer >= 0, got {n_samples!r}")
        if seed is not None and not n_samples:
            raise ValueError("seed seeds the samples; without n_samples it would be ignored")
        if chunks is not None or (is_xarray(targets) and is_dask_backed(targets)):
            if not is_xarray(targets):
                raise ValueError("chunks= needs xarray targets (a grid); predict a table in "
                                 "pieces with chunk_size= instead")
            if as_table:
                raise ValueError("as_table with a lazy (dask-backed or chunked) grid: a "
                                 "table is held whole; compute the grid first or write .nc")
            if n_samples:
                raise ValueError("n_samples with a lazy (dask-backed or chunked) grid: "
                                 "samples are not drawn block by block; compute the grid "
                                 "first or leave n_samples at 0")
            options = {"crs": crs, "quantiles": quantiles, "interval": interval,
                       "exceedance": thresholds, "chunk_size": chunk_size,
                       "max_memory": max_memory}
            dims = grid_dims(targets, self.schema)
            if chunks == "auto":
                chunks = blocks_of({dim: targets.sizes[dim] for dim in dims}, block_points(
                    chunk_size, max_memory, self.predictor.model))
            elif isinstance(chunks, str):
                raise ValueError(f"chunks must be a mapping or 'auto', got {chunks!r}")
            return predict_lazily(lambda block: self.predict(block, **options), targets,
                                  dims, chunks)
        per_target = 8 * (2 * len(self.predictor.model.roles) + 4) + 12 * (
            2 + len(levels) + len(thresholds) + (2 if interval is not None else 0)
            + n_samples) * max(1, len(self.schema.values))
        check_fits_in_memory(count_targets(targets, self.schema), per_target)
        refuse_numeric_options(self.predictor.model, {
            "quantiles": levels, "interval": interval is not None, "exceedance": thresholds,
            "n_samples": n_samples, "seed": seed is not None})
        points, template = read_points(targets, self.schema, "targets", with_values=False,
                                       crs=crs)
        if as_table:
            template = template.table()
        if self.schema.time and points.time_zone != self.time_zone:
            aware, naive = (("observations", "targets") if self.time_zone
                            else ("targets", "observations"))
            raise ValueError(f"the {aware}' times carry a timezone but the {naive}' do not: "
                             "localise the naive ones (pandas tz_localize) or drop the zone "
                             "from both, so that both mean the same instants")
        inputs = self.normalizer.inputs(points, self.schema)
        chunk = chunk_size_for(chunk_size, max_memory, self.predictor.model)
        likelihood = self.predictor.model.likelihood
        n, dim_f = points.n, self.predictor.model.width("f")
        request = OutputRequest(tuple(levels), interval, tuple(thresholds), n_samples, seed)
        store: MomentStore | ProbabilityStore | DistributionStore = (
            MomentStore(n, dim_f) if likelihood == "gaussian"
            else ProbabilityStore(n, dim_f) if likelihood == "categorical"
            else DistributionStore(n, dim_f, likelihood_family(likelihood), request,
                                   points.offset))
        with (attention_runtime(compile="never") if max_memory is not None
              else contextlib.nullcontext()):
            self._predict_into(inputs, n, chunk, store, progress)  # bounded: eager
        if isinstance(store, ProbabilityStore):
            return categorical_outputs(template, store.probs, self.schema.classes)
        if isinstance(store, DistributionStore):
            return distribution_outputs(template, store, self.schema)
        blame = OverflowBlame(self.predictor.normalizer is not None, self.largest_value)
        return gaussian_outputs(template, store.mean, store.std, self.normalizer, self.schema,
                                request, blame)

    def write_grid(self, targets: Any, path: str | os.PathLike[str], *,
                   crs: str | None = None, quantiles: Sequence[float] = (),
                   interval: float | None = None, exceedance: Sequence[float] | float = (),
                   chunk_size: int | None = None, max_memory: int | str | None = None,
                   progress: bool = False) -> Path:
        """Predict a grid block by block straight into a netCDF file (atomically).

        The file holds what ``write_table(predict(targets, ...), path)`` would write, but
        neither the grid's outputs nor a task graph is held: the blocks are those of
        ``chunks="auto"`` (sized by ``chunk_size``/``max_memory``), each written as soon as
        it is predicted (:func:`bsatnp.data.files.write_grid`). The options are
        :meth:`predict`'s; samples are not drawn block by block.

        Raises:
            ValueError: If ``targets`` is not an xarray grid, ``path`` is not ``.nc``, or
                an option is bad (nothing is written then).
        """
        from bsatnp.data.files import write_grid

        if not is_xarray(targets):
            raise ValueError("write_grid needs xarray targets (a grid); write a table's "
                             "predictions with write_table")
        options = {"crs": crs, "quantiles": quantiles, "interval": interval,
                   "exceedance": exceedance, "chunk_size": chunk_size, "max_memory": max_memory}
        dims = grid_dims(targets, self.schema)
        chunks = blocks_of({dim: targets.sizes[dim] for dim in dims},
                           block_points(chunk_size, max_memory, self.predictor.model))
        return write_grid(lambda block: self.predict(block, **options), targets, dims, chunks,
                          path, progress)

    def _predict_into(self, inputs: dict[str, np.ndarray], n: int, chunk: int,
                      store: PredictiveStore, progress: bool) -> None:
        """Give ``store`` the predictive at the ``n`` targets, chunk by chunk."""
        starts = range(0, n, chunk)
        if progress:
            starts = tqdm_class()(starts, desc="predicting", unit="chunk")
        for start in starts:
            stop = min(start + chunk, n)
            test = {f"{role}_test": model_tensor(inputs[role][start:stop], self.device)
                    for role in (*self.predictor.model.roles, "offset") if role in inputs}
            check_model_range({k[0]: v for k, v in test.items()}, "targets")
            store(self.model.predictive(test), slice(start, stop), None)


PredictiveStore = Callable[[Any, "slice | np.ndarray", "LocalFrame | None"], None]
"""Takes the predictive of one chunk of targets (those ``where``), and its neighbourhood's
frame if any (:mod:`bsatnp.outputs`)."""


def check_normalised(arrays: dict[str, np.ndarray], points: Points, stored: bool) -> None:
    """Refuse observations that overflow float32 in model units, naming the cause.

    A normaliser fitted on the observations maps them to moderate values, so an overflow
    means values beyond float32 in their own units (blame the data); a stored one (the
    checkpoint's) that maps data within float32 out of range does not fit them, or is
    damaged (blame it, not the data).
    """
    limit = float(np.finfo(np.float32).max)
    given = {"s": points.space, "t": points.time, "x": points.covariates, "f": points.values}
    for role, array in arrays.items():
        with np.errstate(invalid="ignore"):
            if bool((np.abs(array) <= limit).all()):
                continue
        largest = largest_finite(given.get(role))
        if stored and largest <= limit:
            raise ValueError(f"observations: role {role!r} overflows float32 in model units, "
                             f"although the data are within float32 (largest |{role}| = "
                             f"{largest:.3g} in their units): the stored normaliser (the "
                             "checkpoint's) maps them out of range, so it was fitted on very "
                             "different data or is damaged; refit it (Predictor.fit_normalizer) "
                             "or use another checkpoint")
        raise ValueError(f"observations: role {role!r} overflows float32 after normalisation; "
                         "check the units of that column")


def model_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """``[N, D]`` float64 → ``[1, N, D]`` float32 on ``device`` (an overflow becomes inf).

    :func:`check_model_range` refuses it, naming the role.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.ascontiguousarray(array, dtype=np.float32)
    return torch.as_tensor(cast, device=device)[None]


def check_model_range(tensors: dict[str, Tensor], what: str) -> None:
    """Refuse inputs that overflow float32 after normalisation (naming the role)."""
    for role, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{what}: role {role!r} overflows float32 after normalisation; "
                             "check the units of that column")
