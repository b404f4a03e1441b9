"""What a model was trained on (its card's ``envelope``), and checks of data against it.

The card stores the training task as written in its config (``envelope.task``) and what
one training context looks like (:func:`bsatnp.tasks.base.context_envelope`): the values'
moments and the locations' spacing. :class:`Envelope` is the typed view the code reads;
:meth:`Envelope.warnings` says, with the cause and a remedy, how a conditioning set lies
outside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsatnp.config import Config
from bsatnp.data.geo import require
from bsatnp.tasks.frames import OffsetCentre, ValueMoments


@dataclass(frozen=True)
class Envelope(Config):
    """A model's training envelope (defaults: the 2D GP's box, nothing else known).

    Attributes:
        space_half_width: Half-width of the box training locations (or each framed
            context) filled, in model units (degrees for a great-circle model).
        min_ctx: Fewest valid context points of a training task (``None``: unknown).
        max_ctx: Most valid context points of a training task (``None``: unknown).
        n_ctx: Context slots of a training task: the neighbourhood size local conditioning
            uses by default (``None``: unknown).
        framed: Whether every training task was put in its local frame, as local
            conditioning frames a neighbourhood (the model is then always used so).
        values: Moments of one training context's values (``None``: mean 0, std 1).
        spacing: Median distance from a training context location to its nearest other.
        offsets: A training context's log rate and mean log exposure (count models with
            exposures; ``None``: unknown), which the normaliser centres exposures between.
    """

    space_half_width: float = 2.0
    min_ctx: int | None = None
    max_ctx: int | None = None
    n_ctx: int | None = None
    framed: bool = False
    values: ValueMoments | None = None
    spacing: float | None = None
    offsets: OffsetCentre | None = None

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Envelope:
        """The envelope a model card records (``card["envelope"]``).

        Raises:
            ValueError: If the card's envelope is damaged (the message names the field).
        """
        stored = card.get("envelope") or {}
        if not isinstance(stored, Mapping):
            raise ValueError("the model card's envelope is not a mapping")
        task = stored.get("task") or {}
        fields = {key: stored[key] for key in ("space_half_width", "framed", "values",
                                               "spacing", "offsets") if key in stored}
        if isinstance(task, Mapping):
            fields.update({key: task[key] for key in ("min_ctx", "max_ctx", "n_ctx")
                           if isinstance(task.get(key), int)})
        try:
            return cls.from_dict(fields)
        except (ValueError, TypeError) as err:
            raise ValueError(f"the model card's envelope is invalid: {err}") from err

    def warnings(self, n_context: int, inputs: Mapping[str, np.ndarray] | None = None, *,
                 great_circle: bool = False, fitted: bool = True) -> list[str]:
        """Ways a conditioning set lies outside this envelope.

        Its size against ``min_ctx``-``max_ctx`` (a model copes with a few times more, as
        the scaled domains show, but not with orders of magnitude); with the set's
        model-unit ``inputs`` (:meth:`Normalizer.inputs`) also its extent against the box,
        its spacing against ``spacing`` and, unless the normaliser was ``fitted`` on these
        observations (which gives them the training moments by construction), its values
        against ``values``.
        """
        found = []
        low, high = self.min_ctx, self.max_ctx
        if low is not None and high is not None and (
                n_context < max(1, low // 4) or n_context > 16 * high):
            found.append(f"{n_context:,} observations; this model was trained on {low}-{high} "
                         "context points per task: expect degraded accuracy, condition "
                         "locally (neighbours=...) or fine-tune it (Predictor.finetune)")
        if inputs is None:
            return found
        if "s" in inputs and len(inputs["s"]) > 1:
            found += self._space_warnings(inputs["s"], great_circle, fitted)
        if self.values is not None and "f" in inputs and len(inputs["f"]) > 1 and not fitted:
            mean, std = inputs["f"].mean(0), inputs["f"].std(0)
            trained_mean, trained_std = np.asarray(self.values.mean), np.asarray(self.values.std)
            if np.any(np.abs(mean - trained_mean) > 3 * trained_std) or np.any(
                    (std > 3 * trained_std) | (std < trained_std / 3)):
                found.append(
                    f"the observations' values are {_fmt(mean)} ± {_fmt(std)} in model units, "
                    f"the model was trained on {_fmt(trained_mean)} ± {_fmt(trained_std)}: "
                    "they are in other units or another regime than the data its normaliser "
                    "was fitted on; fine-tune it on data like these")
        return found

    def _space_warnings(self, space: np.ndarray, great_circle: bool, fitted: bool
                        ) -> list[str]:
        found = []
        half_extent = float((space.max(0) - space.min(0)).max()) / 2
        unit = "°" if great_circle else " model units"
        if half_extent > 2 * self.space_half_width:
            remedy = ("condition on smaller regions (neighbours=...)" if great_circle
                      else "let space_scale='auto' fit the box, or condition locally "
                      "(neighbours=...)")
            found.append(f"the observations span ±{half_extent:.3g}{unit}; this model was "
                         f"trained on fields of ±{self.space_half_width:.3g}{unit}: expect "
                         f"degraded accuracy; {remedy}")
        if self.spacing is not None and self.spacing > 0:
            spacing = median_spacing(space)
            if spacing > 0 and not 0.25 <= spacing / self.spacing <= 4:
                advice = ("" if great_circle or not fitted else
                          f" (space_scale × {spacing / self.spacing:.3g} would match it)")
                found.append(f"the observations are {spacing:.3g}{unit} apart (median nearest "
                             f"neighbour); this model's training contexts were "
                             f"{self.spacing:.3g}{unit} apart{advice}: expect degraded "
                             "accuracy")
        return found


def median_spacing(space: np.ndarray) -> float:
    """Median distance from a location to its nearest other (distinct) location."""
    spatial = require("scipy", "checking the spacing of observations").spatial
    unique = np.unique(space, axis=0)
    if len(unique) < 2:
        return 0.0
    distance, _ = spatial.cKDTree(unique).query(unique, k=2)
    return float(np.median(distance[:, 1]))


def _fmt(values: np.ndarray) -> str:
    return ", ".join(f"{v:.3g}" for v in np.atleast_1d(values))
