"""Predict from your own data: a model with its schema and normaliser, in original units.

>>> from bsatnp import Predictor
>>> predictor = Predictor.from_pretrained("gp2d")
>>> grid = predictor.predict(stations, bsatnp.grid(lon=(115.9, 117.1, 241), lat=(39.6, 40.5, 181)),
...                          values="pm25", space=("lon", "lat"), crs="lonlat", interval=0.9)

A :class:`Predictor` holds a :class:`~bsatnp.models.base.NeuralProcess`, the
:class:`~bsatnp.data.Schema` naming the roles of the user's columns and, once fitted, the
:class:`~bsatnp.data.Normalizer`; all three live in one checkpoint. :meth:`Predictor.condition`
reads the observations (pandas, xarray or a mapping of arrays) and encodes them once;
:meth:`Conditioned.predict` streams any number of targets through the model in chunks and
returns the container type of the targets with their coordinates copied: mean, std,
quantiles, an interval, exceedance probabilities and marginal samples in the units of the
data (class probabilities and the most likely class for a categorical model).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bsatnp.attention import compiled
from bsatnp.batch import Batch
from bsatnp.data.envelope import Envelope
from bsatnp.data.geo import check_crs
from bsatnp.data.lazy import blocks_of, is_dask_backed, predict_lazily
from bsatnp.data.neighbours import (
    LocalFrame,
    Neighbourhood,
    NeighbourSearch,
    NoObservationInWindow,
    WindowedSearch,
    unit_vectors,
)
from bsatnp.data.normalizer import Normalizer, parse_duration
from bsatnp.data.schema import Schema
from bsatnp.data.tables import (
    Points,
    available_memory,
    class_labels,
    count_targets,
    grid_dims,
    is_xarray,
    read_points,
    time_kind_of,
)
from bsatnp.io.checkpoint import load_checkpoint, save_checkpoint
from bsatnp.models.base import MODERATE_INPUT, ConditionedModel, NeuralProcess, model_device
from bsatnp.progress import tqdm_class

DEFAULT_CHUNK = 16384
"""Targets per chunk when neither ``chunk_size`` nor ``max_memory`` is given."""


class Predictor:
    """A neural process with the schema and normaliser of the data it serves.

    Args:
        model: Any :class:`~bsatnp.models.base.NeuralProcess`.
        schema: Roles of the user's columns (``None``: given at :meth:`condition`).
        normalizer: Fitted maps to model units (``None``: fitted on each conditioning set).
        card: Facts about the model (task, budget, metrics, training envelope).
    """

    def __init__(self, model: NeuralProcess, schema: Schema | None = None,
                 normalizer: Normalizer | None = None, card: dict[str, Any] | None = None
                 ) -> None:
        if not isinstance(model, NeuralProcess):
            raise ValueError(f"model must be a bsatnp NeuralProcess, got {type(model).__name__}")
        self.model = model.eval()
        self.schema = schema
        self.normalizer = normalizer
        self.card = dict(card or {})

    # ---------------------------------------------------------------- storage
    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Predictor:
        """A predictor from a checkpoint (a training run's, a fine-tuned or a saved one).

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If it is not a valid bsatnp checkpoint or its schema is damaged.
        """
        ckpt = load_checkpoint(path)
        model = ckpt.build_model().to(device)
        stored = (ckpt.extra or {}).get("predictor") or {}
        try:
            schema = None if stored.get("schema") is None else Schema.from_dict(stored["schema"])
            normalizer = (None if stored.get("normalizer") is None
                          else Normalizer.from_dict(stored["normalizer"]))
        except (ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"{path}: the stored schema or normaliser is invalid: {err}") from err
        card = stored.get("card") or {}
        if not isinstance(card, dict):
            raise ValueError(f"{path}: the stored model card is not a mapping")
        return cls(model, schema, normalizer, card)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write weights, model config, schema, normaliser and card to one file (atomic)."""
        return save_checkpoint(path, self.model, extra={"predictor": self.state()})

    def state(self) -> dict[str, Any]:
        """Schema, normaliser and card as plain data (stored in checkpoints)."""
        return {"schema": None if self.schema is None else self.schema.to_dict(),
                "normalizer": None if self.normalizer is None else self.normalizer.to_dict(),
                "card": self.card}

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "cpu") -> Predictor:
        """A model shipped with the package (``bsatnp models`` lists them), offline.

        Raises:
            ValueError: If no model of that name ships with this version.
        """
        from bsatnp.pretrained import pretrained_path

        return cls.load(pretrained_path(name), device)

    # ------------------------------------------------------------------ facts
    @property
    def great_circle(self) -> bool:
        """Whether the model measures space by great-circle distance on lon/lat degrees."""
        config = self.model.config
        spec = getattr(config, "bias_s", None)
        use = getattr(config, "use_s", "embed")
        return spec is not None and use in ("bias", "both") and spec.distance.startswith(
            "great_circle")

    @property
    def envelope(self) -> Envelope:
        """What the model was trained on (from its card; defaults for a bare model).

        Raises:
            ValueError: If the card's envelope is damaged.
        """
        return Envelope.from_card(self.card)

    def envelope_warnings(self, n_context: int, inputs: dict[str, np.ndarray] | None = None
                          ) -> list[str]:
        """Ways a conditioning set lies outside the training envelope.

        See :meth:`~bsatnp.data.envelope.Envelope.warnings`.
        """
        return self.envelope.warnings(n_context, inputs, great_circle=self.great_circle,
                                      fitted=self.normalizer is None)

    def describe(self) -> str:
        """Model family and size, card, schema and normaliser as text."""
        n_params = sum(p.numel() for p in self.model.parameters())
        lines = [f"model: {type(self.model).__name__}, {n_params:,} parameters, roles "
                 f"{', '.join(self.model.roles) or '-'}, {self.model.likelihood} likelihood"]
        for key, value in self.card.items():
            lines.append(f"{key}: {value}")
        lines.append(f"schema: {self.schema.describe() if self.schema else 'none (given at use)'}")
        if self.normalizer is not None:
            lines.append("normaliser:\n  " + self.normalizer.describe().replace("\n", "\n  "))
        else:
            lines.append("normaliser: none (fitted on each set of observations)")
        return "\n".join(lines)

    # -------------------------------------------------------------- schema
    def resolve_schema(self, data: Any, **roles: Any) -> Schema:
        """The schema for ``data``: the stored one, or one built from ``roles``.

        ``roles`` are :class:`~bsatnp.data.Schema` fields (``values``, ``space``, ``crs``,
        ``time``, ``covariates``, ``units``; a single name may be a string). Given with a
        stored schema they must agree with it.

        Raises:
            ValueError: If the roles disagree with the stored schema or do not fit the model.
        """
        given = {key: _as_names(value) if key in ("values", "space", "covariates", "units")
                 else value for key, value in roles.items() if value is not None}
        if self.schema is not None:
            stored = self.schema.to_dict()
            clash = {key: (value, stored[key]) for key, value in given.items()
                     if _plain(stored.get(key)) != _plain(value)}
            if clash:
                details = "; ".join(f"{k}: given {v[0]!r}, model has {v[1]!r}"
                                    for k, v in clash.items())
                raise ValueError(f"the data's schema does not match the model's ({details}); "
                                 "rename the columns or omit these arguments")
            return self.schema
        if "values" not in given:
            raise ValueError("name the value column(s): values='pm25' (the model has no "
                             "stored schema)")
        schema = Schema(**given)
        check_crs(schema.crs, "crs")
        if schema.time:
            schema = replace(schema, time_kind=time_kind_of(data, schema))
        if self.model.likelihood == "categorical":
            schema = replace(schema, classes=class_labels(data, schema))
        self.check_schema(schema)
        return schema

    def check_schema(self, schema: Schema) -> None:
        """Raise ``ValueError`` if ``schema`` does not give the model the roles it reads."""
        config = self.model.config
        needs = {"s": len(schema.space), "t": 1 if schema.time else 0,
                 "x": len(schema.covariates)}
        for role, what in (("s", "space"), ("t", "time"), ("x", "covariates")):
            want = getattr(config, f"dim_{role}", 0)
            if needs[role] != want:
                raise ValueError(f"the model reads {want} {what} column(s) (dim_{role}={want}) "
                                 f"but the schema names {needs[role]}")
        if self.model.likelihood == "categorical":
            if len(schema.values) == 1 and len(schema.classes) > config.dim_f and all(
                    _is_number(label) for label in schema.classes) and not all(
                    float(label).is_integer() for label in schema.classes):  # measurements
                raise ValueError(f"this model is a classifier of {config.dim_f} labels, but the "
                                 f"value column {schema.values[0]!r} holds numbers "
                                 f"({len(schema.classes):,} distinct): give a column of class "
                                 "labels, or use a model of numeric values (bsatnp models)")
            if len(schema.values) != 1 or len(schema.classes) != config.dim_f:
                shown = repr(tuple(schema.classes[:8])) + (
                    f" and {len(schema.classes) - 8} more" if len(schema.classes) > 8 else "")
                raise ValueError(f"the model predicts {config.dim_f} classes from one label "
                                 f"column; the data have {len(schema.values)} value column(s) "
                                 f"with classes {shown}")
        elif len(schema.values) != config.dim_f:
            raise ValueError(f"the model predicts {config.dim_f} value(s) but the schema names "
                             f"{len(schema.values)}: {schema.values}")
        if self.great_circle and schema.crs is None:
            raise ValueError("this model reads lon/lat degrees (great-circle distances): "
                             "declare the coordinates' crs, e.g. crs='lonlat'")

    # -------------------------------------------------------------- predict
    def fit_normalizer(self, data: Any, *, space_scale: float | str = "auto",
                       time_scale: float | str = "auto", method: str = "standard",
                       value_transform: str = "none", **roles: Any) -> Normalizer:
        """Fit (and keep) the normaliser on ``data``; later calls reuse it.

        Args:
            data: Observations in the user's units.
            space_scale: See :meth:`Normalizer.fit`.
            time_scale: See :meth:`Normalizer.fit`.
            method: See :meth:`Normalizer.fit`.
            value_transform: See :meth:`Normalizer.fit`.
            **roles: Schema fields if the predictor has no schema yet.
        """
        self.normalizer = None
        self.schema, _, self.normalizer = self.observations(
            data, space_scale=space_scale, time_scale=time_scale, method=method,
            value_transform=value_transform, **roles)
        return self.normalizer

    def observations(self, data: Any, *, space_scale: float | str = "auto",
                     time_scale: float | str = "auto", method: str = "standard",
                     value_transform: str = "none", crs: str | None = None,
                     group: str | None = None,
                     **roles: Any) -> tuple[Schema, Points, Normalizer]:
        """Read observations: their schema, points (NaN rows dropped) and normaliser.

        The normaliser is the predictor's, or one fitted on these points when it has none
        (the options are those of :meth:`Normalizer.fit`). ``crs`` declares the data's CRS
        for a predictor without a schema, and converts from it for one with a schema;
        ``group`` names a column of field labels read into ``points.groups``.
        """
        refuse_numeric_options(self.model, {"value_transform": value_transform != "none",
                                            "units": bool(roles.get("units"))})
        schema = self.resolve_schema(data, crs=crs if self.schema is None else None, **roles)
        points, _ = read_points(data, schema, "observations", with_values=True,
                                crs=None if self.schema is None else crs, group=group)
        normalizer = self.normalizer or Normalizer.fit(
            points, schema, great_circle=self.great_circle, space_scale=space_scale,
            time_scale=time_scale, method=method, value_transform=value_transform,
            space_half_width=self.envelope.space_half_width,
            value_moments=self.envelope.values)
        return schema, points, normalizer

    def condition(self, observations: Any, *, space_scale: float | str = "auto",
                  time_scale: float | str = "auto", method: str = "standard",
                  value_transform: str = "none", crs: str | None = None,
                  neighbours: int | str | None = "auto",
                  time_window: float | str | None = None, **roles: Any) -> Conditioned:
        """Read ``observations`` and encode them once for any number of targets.

        Args:
            observations: DataFrame, xarray Dataset/DataArray or mapping of arrays, in the
                data's units. Points with a missing value or covariate are dropped (with a
                warning that counts them).
            space_scale: Used when the predictor has no normaliser (see
                :meth:`Normalizer.fit`).
            time_scale: Likewise.
            method: Likewise.
            value_transform: Likewise.
            crs: CRS of the observations if not the schema's (converted with pyproj).
            neighbours: Local conditioning (:mod:`bsatnp.data.neighbours`): each tile of
                targets is predicted from at most this many observations around it.
                ``"auto"`` (the default): the context size of the model's training tasks
                when there are more observations than that, else all of them; ``None``:
                always all of them. With ``neighbours >= len(observations)`` the result
                is that of conditioning on all of them.
            time_window: Space-time models: each target at time ``τ`` is conditioned on
                its ``neighbours`` nearest observations *in space* among those with
                ``|t − τ| <= time_window`` (:class:`~bsatnp.data.neighbours.WindowedSearch`);
                a number in the time column's units, or for datetimes a duration such as
                ``"6h"``; ``0`` keeps each target's own instant. ``None`` (the default):
                neighbours by distance in space and model time together.
            **roles: Schema fields (``values``, ``space``, ``crs``, ``time``,
                ``covariates``, ``units``) when the predictor has no schema.

        Raises:
            ValueError: On bad data (module :mod:`bsatnp.data.tables`), a schema that does
                not match the model, no valid observation, ``neighbours`` < 1, or a
                ``time_window`` without a time role or below 0.
        """
        if time_window is not None and "t" not in self.model.roles:
            raise ValueError("time_window needs a model that reads time (a t role); this "
                             "one is spatial: condition on each time's observations instead")
        schema, points, normalizer = self.observations(
            observations, space_scale=space_scale, time_scale=time_scale, method=method,
            value_transform=value_transform, crs=crs, **roles)
        window = None if time_window is None else parse_duration(
            time_window, schema.time_kind, "time_window", zero=True) / normalizer.time_scale
        k = self.neighbours_for(points.n, neighbours)
        if self.local_frames:  # trained on framed neighbourhoods: always framed
            return LocallyConditioned(self, schema, normalizer, points, k or points.n,
                                      time_window=window)
        if k is None and window is None:
            return Conditioned(self, schema, normalizer, points)
        rescale = self.normalizer is None and space_scale == "auto" and k is not None
        return LocallyConditioned(self, schema, normalizer, points, k or points.n,
                                  rescale=rescale, time_window=window)

    @property
    def local_frames(self) -> bool:
        """Whether the model was trained on framed neighbourhoods.

        Either a framed task (card ``envelope.framed``, e.g. ``spatial``) or fine-tuning
        with ``split="gap"``.
        """
        return self.envelope.framed or (self.card.get("finetuned") or {}).get("split") == "gap"

    def neighbours_for(self, n_observations: int, neighbours: int | str | None) -> int | None:
        """The neighbourhood size for ``n_observations`` (``None``: condition on all).

        Raises:
            ValueError: If ``neighbours`` is not ``"auto"``, ``None`` or an integer >= 1.
        """
        if neighbours is None:
            return None
        if neighbours == "auto":
            finetuned = self.card.get("finetuned") or {}
            n_ctx = (finetuned.get("n_ctx") if finetuned.get("split") == "gap"
                     else self.envelope.n_ctx)
            if isinstance(n_ctx, int) and n_observations > n_ctx and "s" in self.model.roles:
                return n_ctx
            return None
        if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) \
                or neighbours < 1:
            raise ValueError(f"neighbours must be 'auto', None or an integer >= 1, got "
                             f"{neighbours!r}")
        return int(neighbours)

    def predict(self, observations: Any, targets: Any, **kwargs: Any) -> Any:
        """``condition(observations, ...)`` then ``predict(targets, ...)`` (keywords split).

        Keywords of :meth:`Conditioned.predict` go there (``target_crs`` is its ``crs``),
        the rest to :meth:`condition`.
        """
        predict_keys = {"quantiles", "interval", "exceedance", "n_samples", "seed",
                        "chunk_size", "max_memory", "progress", "as_table"}
        options = {key: kwargs.pop(key) for key in list(kwargs) if key in predict_keys}
        if "target_crs" in kwargs:
            options["crs"] = kwargs.pop("target_crs")
        return self.condition(observations, **kwargs).predict(targets, **options)

    def finetune(self, data: Any, **kwargs: Any) -> Predictor:
        """Train (or fine-tune) the model on ``data`` (:func:`bsatnp.finetune.finetune`)."""
        from bsatnp.finetune import finetune

        return finetune(self, data, **kwargs)


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
        self.largest_value = _largest(points.values)
        arrays = normalizer.inputs(points, schema)
        _check_normalised(arrays, points, stored=predictor.normalizer is not None)
        self.warnings = predictor.envelope_warnings(points.n, arrays)
        for message in self.warnings:
            warnings.warn(message, stacklevel=3)
        model = predictor.model
        device = model_device(model)
        tensors = {role: _tensor(value, device) for role, value in arrays.items()}
        _check_model_range(tensors, "observations")
        context = {f"{role}_ctx": tensors[role] for role in (*model.roles, "f")}
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
                :func:`bsatnp.attention.compiled.eager`).
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
        levels = _levels(quantiles, interval)  # checked before any work
        thresholds = _thresholds(exceedance)
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
                chunks = blocks_of({dim: targets.sizes[dim] for dim in dims}, _block_points(
                    chunk_size, max_memory, self.predictor.model))
            elif isinstance(chunks, str):
                raise ValueError(f"chunks must be a mapping or 'auto', got {chunks!r}")
            return predict_lazily(lambda block: self.predict(block, **options), targets,
                                  dims, chunks)
        per_target = 8 * (2 * len(self.predictor.model.roles) + 4) + 12 * (
            2 + len(levels) + len(thresholds) + (2 if interval is not None else 0)
            + n_samples) * max(1, len(self.schema.values))
        _check_fits_in_memory(count_targets(targets, self.schema), per_target)
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
        chunk = _chunk_size(chunk_size, max_memory, self.predictor.model)
        categorical = self.predictor.model.likelihood == "categorical"
        n, dim_f = points.n, self.predictor.model.config.dim_f
        first = np.empty((n, dim_f), np.float32)
        second = None if categorical else np.empty((n, dim_f), np.float32)
        with compiled.eager() if max_memory is not None else contextlib.nullcontext():
            self._predict_into(inputs, n, chunk, first, second, progress)  # bounded: eager
        if categorical:
            return self._categorical(template, first)
        return self._gaussian(template, first, second, levels, interval, thresholds,
                              n_samples, seed)

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
                           _block_points(chunk_size, max_memory, self.predictor.model))
        return write_grid(lambda block: self.predict(block, **options), targets, dims, chunks,
                          path, progress)

    def _predict_into(self, inputs: dict[str, np.ndarray], n: int, chunk: int,
                      first: np.ndarray, second: np.ndarray | None, progress: bool) -> None:
        """Fill ``first``/``second`` (mean/std, or probabilities) at the ``n`` targets."""
        starts = range(0, n, chunk)
        if progress:
            starts = tqdm_class()(starts, desc="predicting", unit="chunk")
        for start in starts:
            stop = min(start + chunk, n)
            test = {f"{role}_test": _tensor(inputs[role][start:stop], self.device)
                    for role in self.predictor.model.roles}
            _check_model_range({k[0]: v for k, v in test.items()}, "targets")
            _store(self.model.predictive(test), slice(start, stop), first, second)

    def _gaussian(self, template: Any, mean: np.ndarray, std: np.ndarray,
                  levels: list[float], interval: float | None, thresholds: list[float],
                  n_samples: int, seed: int | None) -> Any:
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, with the cause
            return self._gaussian_outputs(template, mean, std, levels, interval, thresholds,
                                          n_samples, seed)

    def _gaussian_outputs(self, template: Any, mean: np.ndarray, std: np.ndarray,
                          levels: list[float], interval: float | None,
                          thresholds: list[float], n_samples: int, seed: int | None) -> Any:
        """The outputs in the data's units; one that is not finite is refused with its cause."""
        norm = self.normalizer
        loc, scale = norm.gaussian(mean.astype(np.float64), std.astype(np.float64))
        user_mean, user_std = norm.moments(loc, scale)
        outputs: dict[str, np.ndarray] = {}
        extra: dict[str, tuple[str, Sequence[Any], str]] = {}
        attrs: dict[str, dict[str, Any]] = {}
        rng = np.random.default_rng(seed)
        for j, value in enumerate(self.schema.values):
            prefix = f"{value}_" if len(self.schema.values) > 1 else ""
            units = ({"units": self.schema.units[j]} if j < len(self.schema.units) else {})
            named = {"mean": user_mean[:, j], "std": user_std[:, j]}
            if quantiles := levels:
                named["quantiles"] = np.stack([norm.quantile(loc[:, j], scale[:, j], q)
                                               for q in quantiles])
                extra[prefix + "quantiles"] = ("quantile", quantiles, prefix + "q")
            if interval is not None:
                low, high = _interval_levels(interval)
                named["lower"] = norm.quantile(loc[:, j], scale[:, j], low)
                named["upper"] = norm.quantile(loc[:, j], scale[:, j], high)
            if thresholds:
                named["exceedance"] = np.stack([norm.exceedance(loc[:, j], scale[:, j], t)
                                                for t in thresholds])
                extra[prefix + "exceedance"] = ("threshold", thresholds, prefix + "exceedance_")
            if n_samples:
                draws = loc[:, j] + scale[:, j] * rng.standard_normal((n_samples, len(loc)))
                named["samples"] = norm.inverse(draws)
                extra[prefix + "samples"] = ("sample", list(range(n_samples)), prefix + "sample_")
            for name, array in named.items():
                outputs[prefix + name] = array.astype(np.float32)
                attrs[prefix + name] = {**units, "long_name": f"{value} {name}"}
            if thresholds:  # a probability; the thresholds are in the value's units
                attrs[prefix + "exceedance"] = {
                    "units": "1", "long_name": f"P({value} > threshold)",
                    **({"threshold_units": units["units"]} if units else {})}
        for name, array in outputs.items():
            if not np.isfinite(array).all():
                _check_finite_output(name, array, _output_overflow_cause(
                    norm, self.predictor.normalizer is not None, self.largest_value, mean,
                    std))
            if name.endswith("samples"):
                attrs[name]["samples_are"] = "marginal (independent across targets)"
        return template.build(outputs, extra, attrs)

    def _categorical(self, template: Any, probs: np.ndarray) -> Any:
        classes = self.schema.classes
        predicted = np.asarray(classes, dtype=object)[probs.argmax(-1)]
        outputs = {"probability": probs.T, "predicted_class": predicted}
        return template.build(outputs,
                              {"probability": ("class", list(classes), "probability_")})


class LocallyConditioned(Conditioned):
    """A predictor conditioned tile by tile on local neighbourhoods of the observations.

    Each tile of targets (:class:`~bsatnp.data.neighbours.NeighbourSearch`) is predicted
    from its ``neighbours`` nearest observations. With ``rescale`` (the normaliser was
    fitted on these observations with ``space_scale="auto"``) each neighbourhood is mapped
    the way the whole data set would be for a model trained on tasks of that size: its
    values to mean 0 and standard deviation 1, its extent onto the training box; the
    predictions are mapped back. Without it (a stored normaliser or an explicit
    ``space_scale``) the model units of the normaliser are kept.

    Args:
        predictor: The predictor.
        schema: The schema of the observations.
        normalizer: The maps to model units.
        points: The observations (NaN rows dropped), in the data's units.
        neighbours: Observations per neighbourhood at most.
        rescale: Map each neighbourhood as described above.
        time_window: Neighbours in space among the observations within this window of
            each target's time (model units; :class:`WindowedSearch`), or ``None``.
    """

    def __init__(self, predictor: Predictor, schema: Schema, normalizer: Normalizer,
                 points: Points, neighbours: int, *, rescale: bool = True,
                 time_window: float | None = None) -> None:
        self.predictor, self.schema, self.normalizer = predictor, schema, normalizer
        self.n_context, self.time_zone = points.n, points.time_zone
        self.largest_value = _largest(points.values)
        self.warnings: list[str] = []
        self.device = model_device(predictor.model)
        self.rescale = rescale and not predictor.great_circle
        self.context = normalizer.inputs(points, schema)
        _check_normalised(self.context, points, stored=predictor.normalizer is not None)
        _check_model_range({role: _tensor(value, self.device)
                            for role, value in self.context.items()}, "observations")
        self.time_window = time_window
        coordinates = self._coordinates(self.context)
        self.search: NeighbourSearch | WindowedSearch = (
            NeighbourSearch(coordinates, neighbours) if time_window is None
            else WindowedSearch(coordinates, self.context["t"], neighbours, time_window))
        self.neighbours = self.search.k

    def _coordinates(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Where points are for the neighbour search (model units; 3D for great circles).

        Space, and model time too unless a time window selects by time.
        """
        space = arrays["s"]
        if self.predictor.great_circle:
            space = unit_vectors(space)
        with_time = "t" in arrays and "t" in self.predictor.model.roles \
            and self.time_window is None
        return np.concatenate([space] + ([arrays["t"]] if with_time else []), axis=1)

    def _tiles(self, inputs: dict[str, np.ndarray], chunk: int) -> Iterator[Neighbourhood]:
        coordinates = self._coordinates(inputs)
        if isinstance(self.search, NeighbourSearch):
            yield from self.search.tiles(coordinates, max_targets=chunk)
            return
        try:
            yield from self.search.tiles(coordinates, inputs["t"], max_targets=chunk)
        except NoObservationInWindow as error:
            when = error.time * self.normalizer.time_scale + self.normalizer.time_shift
            shown = (str(np.datetime64(round(when), "s")) if self.schema.time_kind == "datetime"
                     else f"{when:g}")
            raise ValueError(f"{error.count} target(s) at time {shown} have no observation "
                             "within the time window: widen time_window or drop those "
                             "targets") from None

    def _predict_into(self, inputs: dict[str, np.ndarray], n: int, chunk: int,
                      first: np.ndarray, second: np.ndarray | None, progress: bool) -> None:
        model = self.predictor.model
        envelope = self.predictor.envelope
        tiles = self._tiles(inputs, chunk)
        if progress:
            tiles = tqdm_class()(tiles, desc="predicting", unit="tile")
        for tile in tiles:
            context = {role: self.context[role][tile.context] for role in (*model.roles, "f")}
            test = {role: inputs[role][tile.targets] for role in model.roles}
            frame = None
            if self.rescale:
                frame = LocalFrame.fit(context["s"], None if second is None else context["f"],
                                       envelope.space_half_width, envelope.values)
                context["s"], test["s"] = frame.space(context["s"]), frame.space(test["s"])
                context["f"] = context["f"] if second is None else frame.values(context["f"])
            batch = Batch(**{f"{role}_ctx": _tensor(value, self.device)
                             for role, value in context.items()},
                          **{f"{role}_test": _tensor(value, self.device)
                             for role, value in test.items()})
            _check_model_range({role: batch.test(role) for role in model.roles}, "targets")
            dist = model.condition(batch).predictive(
                {f"{role}_test": batch.test(role) for role in model.roles})
            _store(dist, tile.targets, first, second)
            if second is not None and frame is not None:
                first[tile.targets] = first[tile.targets] * frame.scale + frame.shift
                second[tile.targets] = second[tile.targets] * frame.scale


def _store(dist: Any, where: slice | np.ndarray, first: np.ndarray,
           second: np.ndarray | None) -> None:
    """Write a predictive of one chunk: probabilities, or mean and std."""
    if second is None:
        first[where] = dist.probs[0].cpu().numpy()
    else:
        first[where] = dist.mean[0].cpu().numpy()
        second[where] = dist.stddev[0].cpu().numpy()


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


def _check_fits_in_memory(n_targets: int, per_target: int) -> None:
    """Refuse targets whose inputs and outputs would not fit in the memory available."""
    available = available_memory()
    needed = n_targets * per_target
    if available is not None and needed > available:
        raise ValueError(f"{n_targets:,} targets with these outputs need about "
                         f"{needed / 2**30:.1f} GiB in memory ({per_target} bytes each) but "
                         f"{available / 2**30:.1f} GiB are available: predict fewer targets "
                         "at a time (a coarser grid, or pieces), or fewer samples")


def _check_finite_output(name: str, array: np.ndarray, cause: str) -> None:
    """Refuse an output that is not finite (in float32), naming the cause."""
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    count = int(bad.sum())
    raise ValueError(f"prediction {name!r} is not finite at {count:,} target(s): {cause}")


def _largest(values: np.ndarray | None) -> float:
    """The largest finite ``|value|`` (0 for none)."""
    if values is None or not values.size:
        return 0.0
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def _output_overflow_cause(norm: Normalizer, stored: bool, largest_value: float,
                           mean: np.ndarray, std: np.ndarray) -> str:
    """Why outputs in the data's units overflow float32: transform, data, model or normaliser."""
    if norm.value_transform != "none":
        return (f"the inverse {norm.value_transform!r} transform overflows float32 there: the "
                "values span too many orders of magnitude for it (fit on a narrower range, or "
                "use value_transform='none')")
    if largest_value * MODERATE_INPUT > np.finfo(np.float32).max:
        return "the values overflow float32 there: rescale them (e.g. other units)"
    model_units = max(_largest(mean), _largest(std))
    if model_units > MODERATE_INPUT:
        return (f"the model's outputs are huge in model units (up to {model_units:.3g}) for "
                f"observed values of at most {largest_value:.3g}: the model itself is broken "
                "(diverged weights): use an earlier checkpoint")
    whose = "the stored normaliser (the checkpoint's)" if stored else "the normaliser"
    return (f"{whose} maps moderate outputs (up to {model_units:.3g} in model units) out of "
            f"float32 with value scale {', '.join(f'{v:.3g}' for v in norm.value_scale)}, "
            f"for observed values of at most {largest_value:.3g}: it was fitted on very "
            "different data, or is damaged; refit it (Predictor.fit_normalizer)")


def _check_normalised(arrays: dict[str, np.ndarray], points: Points, stored: bool) -> None:
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
        largest = _largest(given.get(role))
        if stored and largest <= limit:
            raise ValueError(f"observations: role {role!r} overflows float32 in model units, "
                             f"although the data are within float32 (largest |{role}| = "
                             f"{largest:.3g} in their units): the stored normaliser (the "
                             "checkpoint's) maps them out of range, so it was fitted on very "
                             "different data or is damaged; refit it (Predictor.fit_normalizer) "
                             "or use another checkpoint")
        raise ValueError(f"observations: role {role!r} overflows float32 after normalisation; "
                         "check the units of that column")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_names(value: Any) -> tuple[str, ...]:
    """Column names as strings: one name (any label, e.g. the integer ``0``) or several."""
    if isinstance(value, (str, int, np.integer)):
        return (str(value),)
    return tuple(str(v) for v in value)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value


def _tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """``[N, D]`` float64 → ``[1, N, D]`` float32 on ``device`` (an overflow becomes inf).

    :func:`_check_model_range` refuses it, naming the role.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.ascontiguousarray(array, dtype=np.float32)
    return torch.as_tensor(cast, device=device)[None]


def _check_model_range(tensors: dict[str, Tensor], what: str) -> None:
    """Refuse inputs that overflow float32 after normalisation (naming the role)."""
    for role, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{what}: role {role!r} overflows float32 after normalisation; "
                             "check the units of that column")


def _levels(quantiles: Sequence[float], interval: float | None) -> list[float]:
    """Quantile levels as floats; ``ValueError`` on a level or interval outside (0, 1)."""
    levels = [float(q) for q in quantiles]
    for q in levels:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantiles must lie in (0, 1), got {q}")
    if interval is not None and not 0.0 < interval < 1.0:
        raise ValueError(f"interval must lie in (0, 1), e.g. 0.9, got {interval}")
    return levels


def _thresholds(exceedance: Sequence[float] | float) -> list[float]:
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


def _interval_levels(interval: float | None) -> tuple[float, ...]:
    if interval is None:
        return ()
    return ((1.0 - interval) / 2, (1.0 + interval) / 2)


def _chunk_size(chunk_size: int | None, max_memory: int | str | None,
                model: NeuralProcess) -> int:
    """Targets per forward pass from an explicit size or a memory bound."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return chunk_size
    if max_memory is None:
        return DEFAULT_CHUNK
    budget = parse_bytes(max_memory)
    per_target = bytes_per_target(model)
    if budget < 64 * per_target:
        raise ValueError(f"max_memory={max_memory!r} is too small: a chunk of 64 targets "
                         f"needs about {64 * per_target / 2**20:.1f} MiB")
    return int(budget // per_target)


BLOCK_BYTES_PER_TARGET = 512
"""What a target of a lazy block holds while the block is computed (inputs in float64,
outputs, their xarray copies): far less than a forward pass's working memory."""


def _block_points(chunk_size: int | None, max_memory: int | str | None,
                  model: NeuralProcess) -> int:
    """Targets of a lazy block (``chunks="auto"``).

    The memory a chunk of forward passes may use, held by finished outputs instead (a block
    is predicted chunk by chunk), so that a grid of 10⁷ points is a few hundred blocks, not
    tens of thousands (each a task in dask's graph). An explicit ``chunk_size`` is kept.
    """
    chunk = _chunk_size(chunk_size, max_memory, model)
    if chunk_size is not None:
        return chunk
    return max(chunk, chunk * bytes_per_target(model) // BLOCK_BYTES_PER_TARGET)


def bytes_per_target(model: NeuralProcess) -> int:
    """Working memory of one target in a chunk (activations alive at once, float32, ×4)."""
    config = model.config
    widths = [getattr(config, name, 0) for name in ("dim", "qkv_dim", "ffn_dim")]
    widths += list(getattr(config, "embed_hidden", ())) + list(getattr(config, "head_hidden", ()))
    return 4 * 4 * max(1024, 3 * sum(widths))


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

