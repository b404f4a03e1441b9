"""The 2D-GP benchmark (SPEC §8, PROTOCOLS §1) and its evaluation domains.

Locations i.i.d. uniform on a square box, an RBF GP with lengthscale ~ Beta(3, 7), noise
0.1 on the context. Domains: ``shifted`` moves the box by +10 in both axes
(``[−2, 2]² → [8, 12]²``; drawn from the same seed, the shifted batches are the in-domain
batches translated, a paired comparison); ``scaled`` doubles the side about its centre with
4× the points (``[−4, 4]²``, 2048 context slots, 4096 test points) and draws its test
targets from their exact conditionals (:class:`~bsatnp.tasks.gp.GPTask`), which keeps the
per-point metrics' expectation at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from bsatnp.tasks.base import IN_DOMAIN, Task
from bsatnp.tasks.gp import GPTask, check_box, uniform_box
from bsatnp.tasks.registry import register_task

SHIFT = 10.0
"""Offset of the shifted domain in both axes."""


@register_task
@dataclass(frozen=True)
class GP2DTask(GPTask):
    """2D-GP batches (fields of :class:`~bsatnp.tasks.gp.GPTask` plus the box).

    Attributes:
        box: ``(lo, hi)`` of the square ``[lo, hi]²`` the locations are drawn from.
        scaled_min_ctx: Fewest valid context points of the scaled domain (the paper's
            task: 492); ``None`` means ``4 × min_ctx``.
    """

    name = "gp2d"
    domains = (IN_DOMAIN, "shifted", "scaled")

    box: tuple[float, float] = (-2.0, 2.0)
    scaled_min_ctx: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_box(self.box)
        if self.scaled_min_ctx is not None and not (
            1 <= self.scaled_min_ctx <= 4 * (self.max_ctx + 1) - 1
        ):
            raise ValueError(f"scaled_min_ctx must be in [1, 4·(max_ctx+1) − 1], got "
                             f"{self.scaled_min_ctx}")

    def locations(self, generator: torch.Generator | None) -> Tensor:
        """``n_points`` uniform on ``box²``, ``[1, N, 2]``."""
        return uniform_box(self.n_points, 2, self.box, generator)

    def domain(self, name: str) -> Task:
        """``in_domain``, ``shifted`` (box + 10) or ``scaled``.

        ``scaled`` doubles the side, has 4× the points and conditional test targets.
        """
        lo, hi = self.box
        if name == "shifted":
            return replace(self, box=(lo + SHIFT, hi + SHIFT))
        if name == "scaled":
            centre, half = (lo + hi) / 2, (hi - lo) / 2
            return replace(
                self, box=(centre - 2 * half, centre + 2 * half), n_ctx=4 * self.n_ctx,
                n_test=4 * self.n_test, max_ctx=4 * (self.max_ctx + 1) - 1,
                min_ctx=self.scaled_min_ctx or 4 * self.min_ctx, targets="conditional",
            )
        return super().domain(name)

