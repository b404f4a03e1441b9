"""Beijing multi-site air quality (UCI 501, PROTOCOLS §8): forecast PM2.5 and PM10.

Hourly records of 12 stations, 2013-03-01 to 2017-02-28, read from
``<data>/beijing_air_quality/`` (:func:`bsatnp.tasks.real_data.data_dir`). Rows with a
missing value in any column (unused pollutants included) are dropped, and the rows are
sorted by time, then station. Each row gives

* ``x`` (27): year, month, day, hour, day of week (Monday = 0), weekend flag, TEMP, PRES,
  DEWP, RAIN, WSPM and the one-hot wind direction (:data:`WIND_DIRECTIONS`);
* ``s`` (2): the station's (lat, lon) from ``stations.csv``;
* ``t`` (1): seconds since the first timestamp;
* ``f`` (2): (PM2.5, PM10) in µg/m³.

The rows are split chronologically 80/10/10 into train/valid/test; each cut moves forward
to the next timestamp so that no hour is shared by two splits (our choice: at most 11 rows
move). Every column of ``x``, ``s``, ``t`` and ``f`` is min–max scaled with the minimum and
maximum of the training rows (validation and test ``t`` exceed 1), and metrics are on the
scaled targets; :meth:`BeijingTask.to_physical` converts back.

A task is a window of ``n_ctx + n_test`` (708) consecutive rows, about 59 hours of the 12
stations: the first ``n_ctx`` (624) are the context, all valid, the next ``n_test`` (84)
the test set. Window starts are uniform over the split, distinct within a batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from bsatnp.batch import Batch
from bsatnp.tasks.base import SPLITS, Task
from bsatnp.tasks.real_data import check_split, dataset_dir
from bsatnp.tasks.registry import register_task
from bsatnp.tasks.samplers import row_windows

DATASET = "beijing_air_quality"
"""Folder of the data inside the data directory."""
WIND_DIRECTIONS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE",
                   "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
"""The 16 compass points of the ``wd`` column, clockwise from north: the one-hot order."""
NUMERIC_FEATURES = ("year", "month", "day", "hour", "day_of_week", "is_weekend", "TEMP",
                    "PRES", "DEWP", "RAIN", "WSPM")
"""The numeric columns of ``x``, in order (the one-hot wind direction follows)."""
FEATURES = NUMERIC_FEATURES + tuple(f"wd_{d}" for d in WIND_DIRECTIONS)
"""Names of the 27 columns of ``x``."""
TARGETS = ("PM2.5", "PM10")
"""Names of the two columns of ``f``."""
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""Shares of the rows in train, valid and test (chronological)."""

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


@dataclass(frozen=True, eq=False)
class BeijingRows:
    """The rows of one split, scaled (``N`` rows, in time order).

    Attributes:
        x: Covariates ``[N, 27]`` (float32, :data:`FEATURES`).
        s: Station (lat, lon) ``[N, 2]`` (float32).
        t: Time ``[N, 1]`` (float32).
        f: (PM2.5, PM10) ``[N, 2]`` (float32).
        seconds: Unscaled seconds since the first timestamp ``[N]`` (float64).
        station: Index of the row's station in :attr:`BeijingData.stations` ``[N]`` (int64).
    """

    x: np.ndarray
    s: np.ndarray
    t: np.ndarray
    f: np.ndarray
    seconds: np.ndarray
    station: np.ndarray

    def __len__(self) -> int:
        return len(self.f)


@dataclass(frozen=True, eq=False)
class BeijingData:
    """The scaled rows of every split and the training minima and maxima used to scale them.

    Attributes:
        splits: ``train``, ``valid`` and ``test`` rows.
        stations: Station names (sorted).
        start: The first timestamp (local time), where ``seconds`` is 0.
        x_lo: Training minimum of each ``x`` column ``[27]`` (float64; likewise below).
        x_hi: Training maximum of each ``x`` column ``[27]``.
        s_lo: Training minimum of (lat, lon) ``[2]``.
        s_hi: Training maximum of (lat, lon) ``[2]``.
        t_lo: Training minimum of the seconds ``[1]``.
        t_hi: Training maximum of the seconds ``[1]``.
        f_lo: Training minimum of (PM2.5, PM10) ``[2]`` in µg/m³.
        f_hi: Training maximum of (PM2.5, PM10) ``[2]`` in µg/m³.
    """

    splits: dict[str, BeijingRows]
    stations: tuple[str, ...]
    start: np.datetime64
    x_lo: np.ndarray
    x_hi: np.ndarray
    s_lo: np.ndarray
    s_hi: np.ndarray
    t_lo: np.ndarray
    t_hi: np.ndarray
    f_lo: np.ndarray
    f_hi: np.ndarray


@functools.lru_cache(maxsize=4)
def load_beijing(path: str | Path) -> BeijingData:
    """Read, clean, split and scale the Beijing data in folder ``path`` (cached per path).

    Args:
        path: Folder with the 12 ``PRSA_Data_*.csv[.gz]`` files and ``stations.csv``
            (columns ``station``, ``lat``, ``lon``).

    Raises:
        ImportError: If pandas is not installed.
        FileNotFoundError: If the folder lacks the station files or ``stations.csv``.
        ValueError: If a station has no coordinates or a wind direction is unknown.
    """
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("the beijing task reads its CSV files with pandas: "
                          "pip install 'bsatnp[data]' (or pip install pandas)") from err
    folder = Path(path)
    files = sorted(folder.glob("PRSA_Data_*.csv*"))
    if not files or not (folder / "stations.csv").is_file():
        raise FileNotFoundError(f"{folder}: expected PRSA_Data_*.csv(.gz) files and "
                                "stations.csv")
    table = pd.concat([pd.read_csv(p) for p in files], ignore_index=True).dropna()
    coords = pd.read_csv(folder / "stations.csv").set_index("station")
    stations = tuple(sorted(table["station"].unique()))
    missing = sorted(set(stations) - set(coords.index))
    if missing:
        raise ValueError(f"{folder / 'stations.csv'}: no coordinates for {missing}")
    time = pd.to_datetime(table[["year", "month", "day", "hour"]])
    table = table.assign(time=time).sort_values(["time", "station"], kind="stable")
    time = table["time"]
    wind = pd.Categorical(table["wd"], categories=WIND_DIRECTIONS).codes
    if (wind < 0).any():
        raise ValueError(f"{folder}: unknown wind directions "
                         f"{sorted(set(table['wd'][wind < 0]))}")
    dow = time.dt.day_of_week.to_numpy()
    numeric = np.column_stack([
        table[["year", "month", "day", "hour"]].to_numpy(np.float64), dow, dow >= 5,
        table[["TEMP", "PRES", "DEWP", "RAIN", "WSPM"]].to_numpy(np.float64)])
    x = np.concatenate([numeric, np.eye(len(WIND_DIRECTIONS))[wind]], axis=1)
    station = pd.Categorical(table["station"], categories=stations).codes.astype(np.int64)
    s = coords.loc[list(stations), ["lat", "lon"]].to_numpy(np.float64)[station]
    seconds = (time - time.iloc[0]).dt.total_seconds().to_numpy()
    f = table[list(TARGETS)].to_numpy(np.float64)
    cuts = _split_cuts(seconds)
    train = slice(0, cuts[0])
    lo_hi = {name: (v[train].min(0), v[train].max(0))
             for name, v in (("x", x), ("s", s), ("t", seconds[:, None]), ("f", f))}
    splits = {}
    for name, lo, hi in zip(SPLITS, (0, *cuts), (*cuts, len(f))):
        part = slice(lo, hi)
        scaled = {key: _min_max(v[part], *lo_hi[key]).astype(np.float32)
                  for key, v in (("x", x), ("s", s), ("t", seconds[:, None]), ("f", f))}
        splits[name] = BeijingRows(**scaled, seconds=seconds[part], station=station[part])
    return BeijingData(splits=splits, stations=stations, start=time.iloc[0].to_datetime64(),
                       **{f"{key}_{end}": value for key, pair in lo_hi.items()
                          for end, value in zip(("lo", "hi"), pair)})


def _split_cuts(seconds: np.ndarray) -> tuple[int, int]:
    """Row indices where valid and test start (``seconds`` ascending).

    The shares of :data:`SPLIT_FRACTIONS`, each moved forward to the first row of the next
    timestamp, so that no hour is in two splits.
    """
    n = len(seconds)
    cuts = []
    for share in np.cumsum(SPLIT_FRACTIONS)[:2]:
        cut = min(max(int(round(share * n)), 1), n - 1)
        cuts.append(int(np.searchsorted(seconds, seconds[cut - 1], side="right")))
    return cuts[0], cuts[1]


def _min_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(values − lo) / (hi − lo)`` per column; a constant column is only shifted."""
    span = np.where(hi > lo, hi - lo, 1.0)
    return (values - lo) / span


@register_task
@dataclass(frozen=True)
class BeijingTask(Task):
    """Forecast the next rows of the Beijing table from the rows before (PROTOCOLS §8).

    The data are loaded on the first :meth:`sample` (or :meth:`data`) call of a process.

    Attributes:
        batch_size: Windows per batch ``B`` (distinct starts).
        n_ctx: Context rows of a window (all valid).
        n_test: Test rows of a window, right after the context rows.
    """

    name = "beijing"

    batch_size: int = 32
    n_ctx: int = 624
    n_test: int = 84

    def __post_init__(self) -> None:
        if min(self.batch_size, self.n_ctx, self.n_test) < 1:
            raise ValueError(f"batch_size, n_ctx and n_test must be >= 1, got "
                             f"{self.batch_size}, {self.n_ctx}, {self.n_test}")

    def model_defaults(self) -> dict[str, Any]:
        """27 covariates, (lat, lon), one time axis and two Gaussian targets."""
        return {"dim_x": len(FEATURES), "dim_s": 2, "dim_t": 1, "dim_f": len(TARGETS),
                "likelihood": "gaussian"}

    def data(self) -> BeijingData:
        """The loaded data (read once per process from the data directory)."""
        return load_beijing(dataset_dir(DATASET))

    def target_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo [2], hi [2])``: training minimum and maximum of (PM2.5, PM10) in µg/m³.

        A scaled value ``v`` is ``lo + v·(hi − lo)`` µg/m³; scaled RMSE, MAE and standard
        deviations convert by the factor ``hi − lo``.
        """
        data = self.data()
        return data.f_lo.copy(), data.f_hi.copy()

    def to_physical(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Scaled (PM2.5, PM10) values ``[..., 2]`` in µg/m³ (a NumPy array or a tensor)."""
        lo, hi = self.target_scale()
        if isinstance(values, Tensor):
            lo_t = torch.as_tensor(lo, dtype=values.dtype, device=values.device)
            hi_t = torch.as_tensor(hi, dtype=values.dtype, device=values.device)
            return lo_t + values * (hi_t - lo_t)
        return lo + np.asarray(values) * (hi - lo)

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch of windows of ``split``.

        Returns:
            Context ``x [B, n_ctx, 27]``, ``s [B, n_ctx, 2]``, ``t [B, n_ctx, 1]``,
            ``f [B, n_ctx, 2]`` (all valid), and the test rows ``[B, n_test, ·]`` likewise.

        Raises:
            ValueError: If ``split`` is unknown or too short for a batch of windows.
        """
        check_split(split)
        rows = self.data().splits[split]
        index = row_windows(len(rows), self.n_ctx + self.n_test, self.batch_size, generator)
        c = self.n_ctx
        roles = {key: torch.from_numpy(getattr(rows, key))[index] for key in "xstf"}
        return Batch(
            x_ctx=roles["x"][:, :c], s_ctx=roles["s"][:, :c], t_ctx=roles["t"][:, :c],
            f_ctx=roles["f"][:, :c], mask_ctx=torch.ones(self.batch_size, c, dtype=torch.bool),
            x_test=roles["x"][:, c:], s_test=roles["s"][:, c:], t_test=roles["t"][:, c:],
            f_test=roles["f"][:, c:])
