"""Predictions from local neighbourhoods of the observations, tile by tile of targets.

:class:`LocallyConditioned` is made by :meth:`bsatnp.predictor.Predictor.condition` with
``neighbours=K`` (or by default when the observations exceed the model's envelope); it
returns what :class:`~bsatnp.conditioned.Conditioned` returns, in the targets' order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from bsatnp.batch import Batch
from bsatnp.conditioned import (
    Conditioned,
    PredictiveStore,
    check_model_range,
    check_normalised,
    model_tensor,
)
from bsatnp.data.neighbours import (
    Neighbourhood,
    NeighbourSearch,
    NoObservationInWindow,
    WindowedSearch,
    unit_vectors,
)
from bsatnp.data.normalizer import Normalizer
from bsatnp.data.schema import Schema
from bsatnp.data.tables import Points
from bsatnp.models.base import model_device
from bsatnp.outputs import largest_finite
from bsatnp.progress import tqdm_class
from bsatnp.tasks.frames import LocalFrame

if TYPE_CHECKING:
    from bsatnp.predictor import Predictor


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
        self.largest_value = largest_finite(points.values)
        self.warnings: list[str] = []
        self.device = model_device(predictor.model)
        self.rescale = rescale and not predictor.great_circle
        self.context = normalizer.inputs(points, schema)
        check_normalised(self.context, points, stored=predictor.normalizer is not None)
        check_model_range({role: model_tensor(value, self.device)
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
                      store: PredictiveStore, progress: bool) -> None:
        model = self.predictor.model
        framed_values = model.likelihood == "gaussian"  # others model the data's units
        envelope = self.predictor.envelope
        tiles = self._tiles(inputs, chunk)
        if progress:
            tiles = tqdm_class()(tiles, desc="predicting", unit="tile")
        for tile in tiles:
            context = {role: self.context[role][tile.context]
                       for role in (*model.roles, "f", "offset") if role in self.context}
            test = {role: inputs[role][tile.targets] for role in (*model.roles, "offset")
                    if role in inputs}
            frame = None
            if self.rescale:
                frame = LocalFrame.fit(context["s"], context["f"] if framed_values else None,
                                       envelope.space_half_width, envelope.values)
                context["s"], test["s"] = frame.space(context["s"]), frame.space(test["s"])
                context["f"] = frame.values(context["f"]) if framed_values else context["f"]
            batch = Batch(**{f"{role}_ctx": model_tensor(value, self.device)
                             for role, value in context.items()},
                          **{f"{role}_test": model_tensor(value, self.device)
                             for role, value in test.items()})
            check_model_range({role: batch.test(role) for role in model.roles}, "targets")
            dist = model.condition(batch).predictive(
                {f"{role}_test": batch.test(role) for role in (*model.roles, "offset")
                 if batch.test(role) is not None})
            store(dist, tile.targets, frame)
