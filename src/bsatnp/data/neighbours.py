"""Local neighbourhoods: which observations condition which targets.

A model trained on tasks of a few hundred context points does not read a hundred thousand
observations well (it was never shown such a density). Local conditioning predicts each
*tile* of targets from its own neighbourhood instead: the ``k`` observations nearest to
the tile's centre, together with the ``per_target`` nearest observations of every target
in the tile (so a target at a tile's edge or in a gap always sees its closest data).

Tiles are the cells of a regular grid over the targets whose size follows the density of
the observations: a cell holds about ``k * tile_fraction`` observations on average, so a
neighbourhood reaches well past its tile. Searches use ``scipy.spatial.cKDTree``;
coordinates are Euclidean (a great-circle model's lon/lat give 3D unit vectors first,
whose chord distance orders points as the great-circle distance does).

Space-time data can be searched with a time window instead (:class:`WindowedSearch`): a
target at time τ is conditioned on its spatial neighbours among the observations with
``|t − τ| <= window`` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bsatnp.data.geo import require

TILE_FRACTION = 0.25
"""Observations in a tile's cell, as a fraction of ``k``, on average."""
PER_TARGET = 8
"""Nearest observations of each target that its neighbourhood always contains."""


@dataclass(frozen=True)
class Neighbourhood:
    """One tile: the targets it predicts and the observations that condition them.

    Attributes:
        targets: Indices into the targets, increasing.
        context: Indices into the observations (at most ``k``), nearest to the tile first.
    """

    targets: np.ndarray
    context: np.ndarray


def unit_vectors(lonlat: np.ndarray) -> np.ndarray:
    """``[N, 2]`` (lon, lat) in degrees → ``[N, 3]`` points on the unit sphere."""
    lon, lat = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)


class NeighbourSearch:
    """A spatial index of observations that cuts targets into tiles with neighbourhoods.

    Args:
        observations: ``[N, D]`` coordinates of the observations (Euclidean).
        k: Observations per neighbourhood at most.
        per_target: Each target's nearest observations always included (at most ``k``).
        tile_fraction: Observations per tile cell as a fraction of ``k``.

    Raises:
        ValueError: If ``k < 1``, there are no observations, or a coordinate is not finite.
    """

    def __init__(self, observations: np.ndarray, k: int, per_target: int = PER_TARGET,
                 tile_fraction: float = TILE_FRACTION) -> None:
        observations = _checked(observations, k)
        spatial = require("scipy", "local conditioning (neighbours=)").spatial
        self.points = observations
        self.tree = spatial.cKDTree(observations)
        self.k = int(min(k, len(observations)))
        self.per_target = int(min(per_target, self.k))
        self.tile_fraction = tile_fraction

    def tiles(self, targets: np.ndarray, max_targets: int | None = None
              ) -> Iterator[Neighbourhood]:
        """The tiles covering ``targets`` (``[M, D]``), each with its neighbourhood.

        Every target lies in exactly one tile; a tile holds at most ``max_targets``.
        """
        targets = np.asarray(targets, dtype=np.float64)
        if not np.isfinite(targets).all():
            raise ValueError("target coordinates must be finite")
        for members in self._cells(targets, max_targets):
            yield Neighbourhood(members, self.context(targets[members]))

    def context(self, tile: np.ndarray) -> np.ndarray:
        """Indices of the neighbourhood of the targets ``tile`` (``[m, D]``)."""
        n = len(self.points)
        if self.k >= n:
            return np.arange(n)
        centre = tile.mean(0)
        _, near_centre = self.tree.query(centre, k=self.k)
        near_centre = np.atleast_1d(near_centre)
        _, near_each = self.tree.query(tile, k=self.per_target)
        required = np.unique(np.asarray(near_each).reshape(-1))
        if len(required) >= self.k:  # the targets' own nearest fill it: keep the closest
            distance = np.linalg.norm(self.points[required] - centre, axis=1)
            return required[np.argsort(distance, kind="stable")[: self.k]]
        chosen = np.zeros(n, dtype=bool)
        chosen[required] = True
        fill = near_centre[~chosen[near_centre]][: self.k - len(required)]
        context = np.concatenate([required, fill])
        distance = np.linalg.norm(self.points[context] - centre, axis=1)
        return context[np.argsort(distance, kind="stable")]

    def _cells(self, targets: np.ndarray, max_targets: int | None) -> Iterator[np.ndarray]:
        """Target indices grouped by grid cell (cells in row-major order, then split)."""
        n_obs = len(self.points)
        lo = np.minimum(targets.min(0), self.points.min(0))
        hi = np.maximum(targets.max(0), self.points.max(0))
        extent = np.where(hi - lo > 0, hi - lo, 0.0)
        spread = extent[extent > 0]
        cells_wanted = max(1.0, n_obs / max(1.0, self.k * self.tile_fraction))
        if len(spread) == 0:
            side = 1.0
        else:  # cells of equal side over the axes that vary, about cells_wanted of them
            side = float(np.prod(spread) / cells_wanted) ** (1.0 / len(spread))
        side = side if side > 0 and math.isfinite(side) else 1.0
        index = np.floor((targets - lo) / side)
        order = np.lexsort(index.T[::-1])  # row-major over the cells, stable within one
        bounds = np.flatnonzero(np.any(np.diff(index[order], axis=0) != 0, axis=1)) + 1
        for members in np.split(order, bounds):
            members = np.sort(members)
            step = max_targets or len(members)
            for start in range(0, len(members), step):
                yield members[start:start + step]


def _checked(observations: np.ndarray, k: int) -> np.ndarray:
    """``observations`` as float64 ``[N, D]``; ``ValueError`` on a bad ``k`` or point."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"neighbours must be a positive integer, got {k!r}")
    observations = np.asarray(observations, dtype=np.float64)
    if observations.ndim != 2 or len(observations) == 0:
        raise ValueError("local conditioning needs at least one observation")
    if not np.isfinite(observations).all():
        raise ValueError("observation coordinates must be finite")
    return observations


class WindowedSearch:
    """Spatial neighbourhoods among the observations within a time window of each target.

    Targets are grouped by their time; the targets at time ``τ`` are tiled as
    :class:`NeighbourSearch` tiles them, over the observations with ``|t − τ| <= window``
    only (a spatial index per distinct window of observations, reused while consecutive
    target times select the same observations).

    Args:
        observations: ``[N, D]`` spatial coordinates of the observations (Euclidean).
        times: ``[N]`` times of the observations.
        k: Observations per neighbourhood at most.
        window: Half-width of the time window (the times' units), ``>= 0``.
        per_target: As in :class:`NeighbourSearch`.
        tile_fraction: As in :class:`NeighbourSearch`.

    Raises:
        ValueError: As :class:`NeighbourSearch`, or on a negative or non-finite window or
            a time that is not finite.
    """

    def __init__(self, observations: np.ndarray, times: np.ndarray, k: int, window: float,
                 per_target: int = PER_TARGET, tile_fraction: float = TILE_FRACTION) -> None:
        self.points = _checked(observations, k)
        self.k = int(min(k, len(self.points)))
        self.per_target, self.tile_fraction = per_target, tile_fraction
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if len(times) != len(self.points) or not np.isfinite(times).all():
            raise ValueError("observation times must be finite, one per observation")
        if not (math.isfinite(window) and window >= 0):
            raise ValueError(f"the time window must be finite and >= 0, got {window}")
        self.order = np.argsort(times, kind="stable")
        self.times = times[self.order]
        self.window = float(window)
        # times compared in float64 after the same affine map: allow its round-off
        self.slack = 1e-9 * (float(np.abs(self.times).max()) + self.window)

    def window_of(self, time: float) -> slice:
        """The observations within the window of ``time``: a slice of ``order``."""
        lo = np.searchsorted(self.times, time - self.window - self.slack, side="left")
        hi = np.searchsorted(self.times, time + self.window + self.slack, side="right")
        return slice(int(lo), int(hi))

    def tiles(self, targets: np.ndarray, times: np.ndarray, max_targets: int | None = None
              ) -> Iterator[Neighbourhood]:
        """Tiles of ``targets`` (``[M, D]``) at ``times`` (``[M]``), time by time.

        Raises:
            ValueError: If a target time is not finite or has no observation in its window.
        """
        targets = np.asarray(targets, dtype=np.float64)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if not np.isfinite(times).all():
            raise ValueError("target times must be finite")
        by_time = np.argsort(times, kind="stable")
        bounds = np.flatnonzero(np.diff(times[by_time]) != 0) + 1
        cached: tuple[slice, NeighbourSearch] | None = None
        for members in np.split(by_time, bounds):
            members = np.sort(members)
            window = self.window_of(float(times[members[0]]))
            if window.start == window.stop:
                raise NoObservationInWindow(float(times[members[0]]), len(members))
            candidates = self.order[window]
            if cached is None or cached[0] != window:
                cached = (window, NeighbourSearch(self.points[candidates], self.k,
                                                  self.per_target, self.tile_fraction))
            for tile in cached[1].tiles(targets[members], max_targets):
                yield Neighbourhood(members[tile.targets], candidates[tile.context])


class NoObservationInWindow(ValueError):
    """Targets at ``time`` have no observation within the time window."""

    def __init__(self, time: float, count: int) -> None:
        super().__init__(f"{count} target(s) at time {time:g} have no observation within "
                         "the time window")
        self.time, self.count = time, count
