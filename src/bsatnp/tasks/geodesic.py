"""Geodesic GP on the sphere and rotated evaluation domains (PROTOCOLS §3).

Locations are (longitude, latitude) in degrees, uniform on ``[−10°, 10°]²``; the kernel is
``exp(−d/ℓ)`` on the great-circle distance ``d`` in degrees with ``ℓ ~ InvGamma(3, 30)``.
The evaluation domains rotate the sphere before the draw: the GP is rotation invariant, so
only what a model sees changes. A bias on the great-circle distance is invariant too; a
bias on the Euclidean distance of raw (lon, lat), or embedded coordinates, is not.

Rotation convention (the reference's): (lon, lat) → unit vector
``(cos lat cos lon, cos lat sin lon, sin lat)``, rotated by the *extrinsic* Euler sequence
``yzx`` with angles ``(−north, east, tilt)`` in degrees, i.e. the matrix
``R = R_x(tilt) · R_z(east) · R_y(−north)`` (first about the fixed y axis, then z, then
x), and back with ``lon = atan2(y, x)``, ``lat = arcsin(z / ‖v‖)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from bsatnp.tasks.base import IN_DOMAIN, Task
from bsatnp.tasks.gp import GPTask, check_box, uniform_box
from bsatnp.tasks.kernels import KernelName
from bsatnp.tasks.priors import InvGamma, Prior
from bsatnp.tasks.registry import register_task

ROTATIONS = {"rotated_60_30_0": (60.0, 30.0, 0.0), "rotated_60_30_20": (60.0, 30.0, 20.0)}
"""Evaluation domains: name → (north, east, tilt) in degrees."""


def rotation_matrix(north: float, east: float, tilt: float) -> Tensor:
    """``R_x(tilt) · R_z(east) · R_y(−north)`` (float64 ``[3, 3]``; angles in degrees)."""

    def axis(which: int, degrees: float) -> Tensor:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        i, j = [(1, 2), (2, 0), (0, 1)][which]  # the plane the rotation turns
        m = torch.eye(3, dtype=torch.float64)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    return axis(0, tilt) @ axis(2, east) @ axis(1, -north)


def rotate_lonlat(lonlat: Tensor, north: float, east: float, tilt: float) -> Tensor:
    """Rotate (longitude, latitude) points in degrees ``[..., 2]`` on the sphere.

    Computed in float64, returned in the input's dtype.
    """
    rad = torch.deg2rad(lonlat.double())
    lon, lat = rad[..., 0], rad[..., 1]
    v = torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)
    v = v @ rotation_matrix(north, east, tilt).T
    lon = torch.atan2(v[..., 1], v[..., 0])
    lat = torch.asin((v[..., 2] / v.norm(dim=-1)).clamp(-1.0, 1.0))
    return torch.rad2deg(torch.stack([lon, lat], dim=-1)).to(lonlat.dtype)


@register_task
@dataclass(frozen=True)
class GeodesicTask(GPTask):
    """GP batches on the sphere (fields of :class:`~bsatnp.tasks.gp.GPTask` plus these).

    Attributes:
        box: ``(lo, hi)`` in degrees of both longitude and latitude before rotation.
        rotation: ``(north, east, tilt)`` in degrees applied to the locations
            (``(0, 0, 0)``: none; the rotated domains set it).
    """

    name = "geodesic"
    domains = (IN_DOMAIN, *ROTATIONS)

    kernel: KernelName = "matern12_great_circle"
    lengthscale_prior: Prior = field(default_factory=lambda: InvGamma(3.0, 30.0))
    box: tuple[float, float] = (-10.0, 10.0)
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_box(self.box)
        if not -90.0 <= self.box[0] < self.box[1] <= 90.0:
            raise ValueError(f"box must lie within [-90, 90] degrees, got {self.box}")

    def locations(self, generator: torch.Generator | None) -> Tensor:
        """``n_points`` uniform on ``box²`` (lon, lat in degrees), rotated, ``[1, N, 2]``."""
        lonlat = uniform_box(self.n_points, 2, self.box, generator)
        if self.rotation == (0.0, 0.0, 0.0):
            return lonlat
        return rotate_lonlat(lonlat, *self.rotation)

    def domain(self, name: str) -> Task:
        """``in_domain`` or a rotated domain of :data:`ROTATIONS`."""
        if name in ROTATIONS:
            return replace(self, rotation=ROTATIONS[name])
        return super().domain(name)
