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

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bsatnp.conditioned import Conditioned
from bsatnp.data.envelope import Envelope
from bsatnp.data.normalizer import Normalizer, parse_duration
from bsatnp.data.schema import Schema
from bsatnp.data.tables import (
    Points,
    read_points,
)
from bsatnp.io.checkpoint import Provenance, load_checkpoint, save_checkpoint
from bsatnp.likelihoods import offset_of
from bsatnp.locally_conditioned import LocallyConditioned
from bsatnp.model_schema import check_values, resolve_schema
from bsatnp.models.base import NeuralProcess
from bsatnp.options import refuse_numeric_options
from bsatnp.tasks.registry import training_card


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
        stored = ckpt.provenance.predictor or {}
        try:
            schema = None if stored.get("schema") is None else Schema.from_dict(stored["schema"])
            normalizer = (None if stored.get("normalizer") is None
                          else Normalizer.from_dict(stored["normalizer"]))
        except (ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"{path}: the stored schema or normaliser is invalid: {err}") from err
        card = stored.get("card") or training_card(ckpt.provenance.experiment, path)
        if not isinstance(card, dict):
            raise ValueError(f"{path}: the stored model card is not a mapping")
        return cls(model, schema, normalizer, card)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write weights, model config, schema, normaliser and card to one file (atomic)."""
        return save_checkpoint(path, self.model,
                               extra=Provenance(predictor=self.state()).to_extra())

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
        return self.model.great_circle

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

        See :func:`bsatnp.model_schema.resolve_schema`. A classifier whose card names its
        classes warns when the data's labels are other names: they are mapped to the
        model's classes in sorted order, and the warning shows the mapping.
        """
        schema = resolve_schema(self.model, self.schema, data, **roles)
        named = [str(name) for name in self.card.get("classes") or ()]
        if named and list(schema.classes) != named:
            pairs = ", ".join(f"{a} → {b}" for a, b in zip(schema.classes, named))
            warnings.warn(f"the labels are mapped to this model's classes in sorted order: "
                          f"{pairs}; rename the labels if that is not what they mean",
                          stacklevel=3)
        return schema

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
        gaussian = self.model.likelihood == "gaussian"
        if value_transform != "none" and not gaussian:
            raise ValueError(f"value_transform={value_transform!r}: a {self.model.likelihood} "
                             "model reads its values in their own units (omit it)")
        schema = self.resolve_schema(data, crs=crs if self.schema is None else None, **roles)
        points, _ = read_points(data, schema, "observations", with_values=True,
                                crs=None if self.schema is None else crs, group=group)
        check_values(self.model, points.values, schema, points.offset)
        normalizer = self.normalizer or Normalizer.fit(
            points, schema, great_circle=self.great_circle, space_scale=space_scale,
            time_scale=time_scale, method=method, value_transform=value_transform,
            space_half_width=self.envelope.space_half_width,
            value_moments=self.envelope.values if gaussian else None,
            keep_values=not gaussian,
            scale_offset=offset_of(self.model.likelihood) == "exposure",
            offset_centre=self.envelope.offsets)
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

    def joint_samples(self, observations: Any, targets: Any, n_samples: int, **kwargs: Any
                      ) -> np.ndarray:
        """Spatially coherent samples at ``targets`` in the data's units.

        See :func:`bsatnp.joint_data.joint_samples` (autoregressive, global conditioning).
        """
        from bsatnp.joint_data import joint_samples

        return joint_samples(self, observations, targets, n_samples, **kwargs)

    def with_likelihood(self, likelihood: str) -> Predictor:
        """A predictor whose model ends in ``likelihood`` instead, to fine-tune on data.

        The weights are this model's where the architectures share them
        (:meth:`NeuralProcess.with_likelihood
        <bsatnp.models.base.NeuralProcess.with_likelihood>`), the new head's parameters
        are untrained: ``Predictor.from_pretrained("spatial").with_likelihood("poisson")
        .finetune(counts, exposure="population", ...)``. The card keeps the envelope (the
        box and context sizes trained on) and says where the model came from; no schema or
        normaliser is carried over (the values are of another kind).

        Raises:
            ValueError: On an unknown likelihood.
        """
        model = self.model.with_likelihood(likelihood)
        card = {"summary": f"{self.card.get('summary') or 'a model'} with an untrained "
                           f"{likelihood} head",
                "envelope": {key: value for key, value in (self.card.get("envelope") or {})
                             .items() if key not in ("values", "offsets")}}
        return type(self)(model, card=card)

    def finetune(self, data: Any, **kwargs: Any) -> Predictor:
        """Train (or fine-tune) the model on ``data`` (:func:`bsatnp.finetune.finetune`)."""
        from bsatnp.finetune import finetune

        return finetune(self, data, **kwargs)
