"""ERA5 2 m temperature over the UK (PROTOCOLS §7, adapted): forecast a frame 6 hours ahead.

The paper's ERA5 extract (three European regions with surface geopotential) is not
available; this task uses the hourly ERA5 2 m temperature of March 2019 on a 0.25° grid of
33 × 49 cells over the UK and Ireland (58–50 °N, 10 °W–2 °E), read from
``<data>/era5/era5_t2m_uk_2019-03_hourly.nc.gz`` (:func:`bsatnp.tasks.real_data.data_dir`).
Without elevation the covariates are ``x = [hour_of_day / 23]`` only (the paper's
``x`` also holds the standardised elevation). Per point:

* ``s`` (2): (lat, lon), each axis standardised separately with the grid's mean and standard
  deviation (the whole grid is the training region: there is no spatial hold-out);
* ``t`` (1): hours since 2019-03-01 00:00 UTC, standardised with the mean and standard
  deviation of the training hours;
* ``f`` (1): t2m standardised with the mean and standard deviation of every training value;
  :meth:`Era5Task.to_physical` converts back to kelvin.

The split is by disjoint periods (our choice where the paper splits by region): train =
days 1–21, valid = days 22–25, test = days 26–31 (UTC); a task's frames all lie in one period.

A batch picks a phase ``p ∈ {0, …, 5}`` and keeps the hours with ``(hour + p) mod 6 = 0``
(6-hourly frames), and a random 30 × 30 block of the grid. Each task of the batch takes 5
consecutive 6-hourly frames of the period ending at a random time (drawn per task): frames
1–4 are the context, each with its own random 225 of the block's 900 cells, of which the first
45–224 are valid (drawn independently per frame, shared by the batch's tasks); frame 5 at
all 900 cells is the test set. The reference serves one (block, phase) for 32 batches to
save loading; here the whole month is in memory, so each batch draws its own.
"""

from __future__ import annotations

import functools
import gzip
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
from bsatnp.tasks.samplers import frame_context

DATASET = "era5"
"""Folder of the data inside the data directory."""
FILE = "era5_t2m_uk_2019-03_hourly.nc.gz"
"""The netCDF3 file (gzip) with ``t2m [time, latitude, longitude]`` in K."""

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


@dataclass(frozen=True, eq=False)
class Era5Data:
    """The grid, standardised, and the statistics used to standardise it.

    Attributes:
        f: Standardised t2m ``[T, H, W]`` (float32).
        lat: Standardised latitude of each grid row ``[H]`` (float32).
        lon: Standardised longitude of each grid column ``[W]`` (float32).
        t: Standardised hours since the first step ``[T]`` (float32).
        hour: UTC hour of day of each step ``[T]`` (int64).
        day: Day of the month of each step ``[T]`` (int64).
        lat_deg: Latitudes in degrees north ``[H]`` (float64, descending).
        lon_deg: Longitudes in degrees east ``[W]`` (float64).
        hours: Hours since the first step ``[T]`` (float64).
        f_mean: Training mean of t2m in K.
        f_std: Training standard deviation of t2m in K.
    """

    f: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    t: np.ndarray
    hour: np.ndarray
    day: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    hours: np.ndarray
    f_mean: float
    f_std: float


@functools.lru_cache(maxsize=4)
def load_era5(path: str | Path, train_days: tuple[int, int] = (1, 21)) -> Era5Data:
    """Read the hourly t2m file ``path`` and standardise it (cached per arguments).

    Args:
        path: The gzip'ed netCDF3 file (variables ``t2m``, ``time``, ``latitude``,
            ``longitude``; time in ``hours since <date>``).
        train_days: First and last day of the month of the training period, whose
            statistics standardise ``t`` and ``f``.

    Raises:
        ImportError: If scipy is not installed.
        ValueError: If the steps are not hourly and gap-free, or the file has NaN.
    """
    try:
        from scipy.io import netcdf_file
    except ImportError as err:
        raise ImportError("the era5 task reads netCDF with scipy: pip install scipy") from err
    with gzip.open(path) as raw, netcdf_file(raw, mmap=False) as nc:
        t2m = np.array(nc.variables["t2m"][:], dtype=np.float64)
        steps = np.array(nc.variables["time"][:], dtype=np.int64)
        units = nc.variables["time"].units.decode()
        lat = np.array(nc.variables["latitude"][:], dtype=np.float64)
        lon = np.array(nc.variables["longitude"][:], dtype=np.float64)
    if not units.startswith("hours since "):
        raise ValueError(f"{path}: time units {units!r} are not 'hours since <date>'")
    if np.any(np.diff(steps) != 1) or not np.isfinite(t2m).all():
        raise ValueError(f"{path}: expected gap-free hourly steps without NaN")
    stamps = np.datetime64(units.removeprefix("hours since ").strip(), "h") + steps
    hour = (stamps - stamps.astype("datetime64[D]")).astype(np.int64)
    day = (stamps.astype("datetime64[D]") - stamps.astype("datetime64[M]")).astype(np.int64) + 1
    hours = (steps - steps[0]).astype(np.float64)
    train = (day >= train_days[0]) & (day <= train_days[1])
    if not train.any():
        raise ValueError(f"{path}: no step in the training days {train_days}")
    f_mean, f_std = float(t2m[train].mean()), float(t2m[train].std())

    def standard(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return ((values - ref.mean()) / ref.std()).astype(np.float32)

    return Era5Data(f=((t2m - f_mean) / f_std).astype(np.float32), lat=standard(lat, lat),
                    lon=standard(lon, lon), t=standard(hours, hours[train]), hour=hour,
                    day=day, lat_deg=lat, lon_deg=lon, hours=hours, f_mean=f_mean, f_std=f_std)


@register_task
@dataclass(frozen=True)
class Era5Task(Task):
    """Forecast a 30 × 30 block of UK 2 m temperature 6 hours ahead (module doc).

    The data are loaded on the first :meth:`sample` (or :meth:`data`) call of a process.

    Attributes:
        batch_size: Tasks per batch ``B`` (they share the block, phase and context cells).
        block: Side of the square block of grid cells.
        window: Frames per task; the last is the test frame.
        step_hours: Hours between frames.
        n_slots: Context slots per context frame.
        min_ctx: Fewest valid context cells per frame.
        max_ctx: Most valid context cells per frame.
        train_days: First and last day of March 2019 of the training period.
        valid_days: First and last day of the validation period.
        test_days: First and last day of the test period.
    """

    name = "era5"

    batch_size: int = 8
    block: int = 30
    window: int = 5
    step_hours: int = 6
    n_slots: int = 225
    min_ctx: int = 45
    max_ctx: int = 224
    train_days: tuple[int, int] = (1, 21)
    valid_days: tuple[int, int] = (22, 25)
    test_days: tuple[int, int] = (26, 31)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.window < 2 or self.step_hours < 1:
            raise ValueError("need batch_size >= 1, window >= 2 and step_hours >= 1")
        if not 1 <= self.min_ctx <= self.max_ctx <= self.n_slots <= self.block**2:
            raise ValueError("need 1 <= min_ctx <= max_ctx <= n_slots <= block², got "
                             f"{self.min_ctx}, {self.max_ctx}, {self.n_slots}, {self.block}²")
        periods = sorted((self.train_days, self.valid_days, self.test_days))
        if any(lo > hi for lo, hi in periods) or any(
                a[1] >= b[0] for a, b in zip(periods, periods[1:])):
            raise ValueError(f"the day ranges must be ordered and disjoint, got train "
                             f"{self.train_days}, valid {self.valid_days}, test {self.test_days}")

    @property
    def n_ctx(self) -> int:
        """Context slots of a task: ``(window − 1)·n_slots``."""
        return (self.window - 1) * self.n_slots

    @property
    def n_test(self) -> int:
        """Test cells of a task: ``block²``."""
        return self.block**2

    def model_defaults(self) -> dict[str, Any]:
        """Hour of day, (lat, lon), one time axis, scalar Gaussian values."""
        return {"dim_x": 1, "dim_s": 2, "dim_t": 1, "dim_f": 1, "likelihood": "gaussian"}

    def data(self) -> Era5Data:
        """The loaded data (read once per process from the data directory)."""
        return load_era5(dataset_dir(DATASET) / FILE, tuple(self.train_days))

    def to_physical(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Standardised t2m values in kelvin (a NumPy array or a tensor).

        Scaled RMSE, MAE and standard deviations convert by the factor ``f_std`` of
        :meth:`data`.
        """
        data = self.data()
        return values * data.f_std + data.f_mean

    def frames(self, split: str, phase: int) -> np.ndarray:
        """Time indices of the frames of ``split`` kept by ``phase`` (ascending).

        Raises:
            ValueError: If ``split`` is unknown.
        """
        check_split(split)
        lo, hi = dict(zip(SPLITS, (self.train_days, self.valid_days, self.test_days)))[split]
        data = self.data()
        keep = ((data.day >= lo) & (data.day <= hi)
                & ((data.hour + phase) % self.step_hours == 0))
        return np.flatnonzero(keep)

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch: context ``[B, (window − 1)·n_slots, ·]``, test ``[B, block², ·]``.

        Roles: ``x [·, 1]`` hour of day / 23, ``s [·, 2]``, ``t [·, 1]``, ``f [·, 1]``.

        Raises:
            ValueError: If ``split`` is unknown, or its period is shorter than a window, or
                the block exceeds the grid.
        """
        data = self.data()
        B, F, n = self.batch_size, self.window - 1, self.block
        n_times, height, width = data.f.shape
        if n > min(height, width):
            raise ValueError(f"block {n} exceeds the {height} × {width} grid")
        phase = int(torch.randint(0, self.step_hours, (1,), generator=generator))
        frames = torch.from_numpy(self.frames(split, phase))
        if len(frames) < self.window:
            raise ValueError(f"split {split!r} has {len(frames)} frames, fewer than a window")
        row0 = int(torch.randint(0, height - n + 1, (1,), generator=generator))
        col0 = int(torch.randint(0, width - n + 1, (1,), generator=generator))
        start = torch.randint(0, len(frames) - self.window + 1, (B,), generator=generator)
        times = frames[start[:, None] + torch.arange(self.window)]  # [B, window]
        index, mask = frame_context(B, F, n * n, self.n_slots, self.min_ctx, self.max_ctx,
                                    generator, shared=True)
        # Points: the context slots of frames 1..F, then every block cell at the last frame.
        cell = torch.cat([index.reshape(B, -1), torch.arange(n * n).expand(B, -1)], dim=1)
        frame = torch.cat([torch.arange(F).repeat_interleave(self.n_slots),
                           torch.full((n * n,), F)])
        time = times[:, frame]  # [B, L]
        row, col = row0 + cell // n, col0 + cell % n
        f = torch.from_numpy(data.f)[time, row, col][..., None]
        s = torch.stack([torch.from_numpy(data.lat)[row], torch.from_numpy(data.lon)[col]], -1)
        t = torch.from_numpy(data.t)[time][..., None]
        x = (torch.from_numpy(data.hour)[time].float() / 23.0)[..., None]
        c = F * self.n_slots
        return Batch(x_ctx=x[:, :c], s_ctx=s[:, :c], t_ctx=t[:, :c], f_ctx=f[:, :c],
                     mask_ctx=mask.reshape(B, -1), x_test=x[:, c:], s_test=s[:, c:],
                     t_test=t[:, c:], f_test=f[:, c:])
