"""Choosing the neighbourhood size on the user's own rows, as kriging fits its variogram.

Local conditioning predicts each tile of targets from its ``K`` nearest observations; which
``K`` predicts best depends on the data (how smooth the field, how far the targets lie from
the observations). :func:`choose_neighbours` holds out rows shaped like the targets —
scattered (``geometry="random"``) or contiguous holes (``"gap"``: each hole the rows nearest
a random row, as a cloud or a missing block leaves them) — predicts them from the rest with
every candidate ``K`` and keeps the one with the lowest mean CRPS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bsatnp.data.tables import is_pandas, is_xarray, read_points

if TYPE_CHECKING:
    from bsatnp.predictor import Predictor

Geometry = Literal["random", "gap"]

CANDIDATES = (128, 256, 512, 1024, 2048)
"""Neighbourhood sizes tried by default (the shipped ``spatial`` model was trained on 16 to
2,048 context points)."""


@dataclass(frozen=True)
class NeighbourChoice:
    """What :func:`choose_neighbours` found.

    Attributes:
        neighbours: The candidate with the lowest mean CRPS.
        crps: Mean CRPS of the held-out rows per candidate, in the values' units.
        held_out: Rows held out (predicted from the other rows), summed over the folds.
        geometry: ``random`` or ``gap``.
    """

    neighbours: int
    crps: dict[int, float]
    held_out: int
    geometry: str


def holdout_rows(space: np.ndarray, geometry: Geometry, fraction: float,
                 generator: np.random.Generator, hole_size: int | None = None,
                 lonlat: bool = False) -> np.ndarray:
    """Sorted indices of the rows to hold out of ``space`` (``[N, D]``).

    ``random``: ``round(fraction · N)`` rows drawn without replacement. ``gap``: holes of
    ``hole_size`` rows (default: an eighth of ``fraction · N``), each the rows nearest a
    random row (by chord distance on the sphere for ``lonlat`` degrees), so each hole is
    contiguous; as many holes as make up ``fraction · N`` rows (at least one). Holes may
    overlap, so slightly fewer rows can come back.

    Raises:
        ValueError: On a ``fraction`` outside (0, 0.5], a ``hole_size`` < 1 or above half
            the rows, or an unknown geometry.
    """
    n = len(space)
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction!r}")
    if hole_size is not None and not 1 <= hole_size <= n // 2:
        raise ValueError(f"hole_size must be between 1 and half the rows ({n // 2}), got "
                         f"{hole_size!r}")
    if geometry == "random":
        count = max(1, round(fraction * n))
        return np.sort(generator.choice(n, count, replace=False))
    if geometry != "gap":
        raise ValueError(f"geometry must be 'random' or 'gap', got {geometry!r}")
    from scipy import spatial

    from bsatnp.data.neighbours import unit_vectors

    points = unit_vectors(space) if lonlat else space
    tree = spatial.cKDTree(points)
    size = hole_size or max(1, round(fraction * n / 8))
    centres = generator.choice(n, max(1, round(fraction * n / size)), replace=False)
    _, rows = tree.query(points[centres], k=size)
    return np.unique(np.asarray(rows).reshape(-1))


def choose_neighbours(predictor: Predictor, observations: Any, *,
                      candidates: Sequence[int] = CANDIDATES, geometry: Geometry = "random",
                      fraction: float = 0.1, hole_size: int | None = None, folds: int = 1,
                      seed: int = 0,
                      **options: Any) -> NeighbourChoice:
    """The neighbourhood size that predicts held-out rows of ``observations`` best.

    Rows with a missing value or coordinate are left out first (as prediction leaves them
    out). Candidates at or above the number of rows kept for conditioning all mean
    conditioning on every row; they are scored once, under the smallest of them.

    Args:
        predictor: A Gaussian model with a space role.
        observations: A DataFrame, a mapping of columns or an xarray Dataset (read as its
            table of rows).
        candidates: Neighbourhood sizes to try (integers >= 1).
        geometry: ``random`` (targets scattered among the observations) or ``gap``
            (targets in contiguous holes); see :func:`holdout_rows`.
        fraction: Share of the rows held out.
        hole_size: Rows per hole of the ``gap`` geometry: about as many as your targets'
            gaps hold (default: an eighth of the rows held out).
        folds: Independent holdouts (drawn one after the other from ``seed``); the CRPS is
            averaged over every held-out row of all of them. More folds, a steadier choice
            where one holdout is small (a single hole in a frame).
        seed: Seed of the held-out rows.
        **options: Passed to :meth:`Predictor.predict` (``values``, ``space``, ``crs``,
            ``time_window``, ...); ``neighbours`` and ``progress`` are set here.

    Raises:
        ValueError: On a categorical model, a model without a space role, no candidate,
            a candidate < 1, too few rows, or the errors of :func:`holdout_rows`.
    """
    import pandas as pd

    if predictor.model.likelihood == "categorical":
        raise ValueError("choose_neighbours scores Gaussian predictions (CRPS); this model "
                         "predicts class probabilities")
    if "s" not in predictor.model.roles:
        raise ValueError("choose_neighbours needs a model with a space role")
    sizes = sorted({_count("candidates", k) for k in candidates})
    if not sizes:
        raise ValueError("candidates is empty: give at least one neighbourhood size")
    _count("folds", folds)
    if "neighbours" in options or "progress" in options:
        raise ValueError("neighbours and progress are set by choose_neighbours")
    table = _rows(observations, pd)
    roles = {key: options[key] for key in ("values", "space", "crs", "time", "covariates",
                                           "units") if key in options}
    schema = predictor.resolve_schema(table, **roles)
    columns = list(schema.columns)
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise ValueError(f"observations lack the column(s) {missing}")
    table = table.loc[table[columns].notna().all(axis=1)].reset_index(drop=True)
    points, _ = read_points(table, schema, "observations", with_values=True)
    generator = np.random.default_rng(seed)
    crps_sums = dict.fromkeys(sizes, 0.0)
    held_out = 0
    for _ in range(folds):  # independent holdouts; each row's CRPS counts once per fold
        held = holdout_rows(points.space, geometry, fraction, generator, hole_size=hole_size,
                            lonlat=schema.geographic)
        for k, total in _fold_crps(predictor, table, held, schema, sizes, options).items():
            crps_sums[k] += total
        held_out += len(held)
    scores = {k: total / held_out for k, total in crps_sums.items()}
    best = min(scores, key=lambda k: (scores[k], k))  # ties: the smaller neighbourhood
    return NeighbourChoice(best, scores, held_out, geometry)


def _fold_crps(predictor: Predictor, table: Any, held: np.ndarray, schema: Any,
               sizes: Sequence[int], options: dict[str, Any]) -> dict[int, float]:
    """Summed CRPS of the ``held`` rows predicted from the others, per neighbourhood size."""
    import torch

    from bsatnp.metrics import crps

    kept = np.setdiff1d(np.arange(len(table)), held)
    if len(kept) < 2:
        raise ValueError(f"too few rows to hold {len(held)} out: {len(table)} usable")
    train, test = table.iloc[kept], table.iloc[held]
    truth = test[list(schema.values)].to_numpy(np.float64)
    targets = test.drop(columns=list(schema.values))
    by_size: dict[int, float] = {}  # K at or beyond the kept rows: all of them, scored once
    for size in sorted({min(k, len(kept)) for k in sizes}):
        out = predictor.predict(train, targets, neighbours=size, progress=False, **options)
        mean, std = _moments(out, schema.values)
        task = [torch.from_numpy(np.array(a))[None] for a in (mean, std, truth)]  # [1, N, V]
        by_size[size] = len(truth) * float(crps(*task, torch.ones(1, len(truth),
                                                                   dtype=torch.bool)))
    return {k: by_size[min(k, len(kept))] for k in sizes}


def _count(name: str, value: Any) -> int:
    """``value`` as an int; ``ValueError`` naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be integers >= 1, got {value!r}")
    return int(value)


def _rows(observations: Any, pd: Any) -> Any:
    """The observations as a DataFrame of rows."""
    if is_pandas(observations):
        return observations
    if is_xarray(observations):
        return observations.to_dataframe().reset_index()
    if isinstance(observations, Mapping):
        return pd.DataFrame({key: np.asarray(value).reshape(-1)
                             for key, value in observations.items()})
    raise ValueError(f"observations must be a DataFrame, a mapping of columns or an xarray "
                     f"Dataset, got {type(observations).__name__}")


def _moments(out: Any, values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[N, V]`` mean and std of a prediction table (``<value>_mean`` for several)."""
    prefixes = [""] if len(values) == 1 else [f"{value}_" for value in values]
    return (out[[p + "mean" for p in prefixes]].to_numpy(np.float64),
            out[[p + "std" for p in prefixes]].to_numpy(np.float64))


__all__ = ["CANDIDATES", "NeighbourChoice", "choose_neighbours", "holdout_rows"]
