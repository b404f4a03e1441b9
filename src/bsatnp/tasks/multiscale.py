"""Multiscale 2D GP (PROTOCOLS §2): fine and coarse points mixed in every task.

Half the points are uniform on a small box (``[−0.5, 0.5]²``), half on a large one
(``[−1.5, 1.5]²``), concatenated and permuted: context and test sets mix both densities.
RBF kernel with lengthscale ~ Beta(3, 7), noise 0.1 on the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bsatnp.tasks.gp import GPTask, check_box, uniform_box
from bsatnp.tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class MultiscaleTask(GPTask):
    """Multiscale GP batches (fields of :class:`~bsatnp.tasks.gp.GPTask` plus the boxes).

    Attributes:
        fine_box: ``(lo, hi)`` of the square holding the first half of the points.
        coarse_box: ``(lo, hi)`` of the square holding the second half.
    """

    name = "multiscale"

    batch_size: int = 32
    n_ctx: int = 128
    n_test: int = 128
    min_ctx: int = 64
    max_ctx: int = 127
    fine_box: tuple[float, float] = (-0.5, 0.5)
    coarse_box: tuple[float, float] = (-1.5, 1.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_box(self.fine_box, "fine_box")
        check_box(self.coarse_box, "coarse_box")

    def locations(self, generator: torch.Generator | None) -> Tensor:
        """``⌈N/2⌉`` points on ``fine_box²`` then ``⌊N/2⌋`` on ``coarse_box²``, ``[1, N, 2]``."""
        n_fine = (self.n_points + 1) // 2
        fine = uniform_box(n_fine, 2, self.fine_box, generator)
        coarse = uniform_box(self.n_points - n_fine, 2, self.coarse_box, generator)
        return torch.cat([fine, coarse], dim=1)
