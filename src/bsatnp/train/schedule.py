"""Learning-rate schedule: cosine decay from the base rate to a small fraction of it."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class CosineDecay:
    """Multiplier of the base learning rate: ``1`` at step 0, ``final_factor`` at the end.

    ``factor(k) = final + (1 − final)·½·(1 + cos(π·min(k, total)/total))``; after
    ``total_steps`` it stays at ``final_factor``. A callable object rather than a function
    so that :class:`~torch.optim.lr_scheduler.LambdaLR` saves its settings in its
    ``state_dict``.

    Args:
        total_steps: Steps over which the rate decays (SPEC §7: 100,000).
        final_factor: Final rate as a fraction of the base rate (SPEC §7: 2e-5).
    """

    def __init__(self, total_steps: int, final_factor: float) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= final_factor <= 1.0:
            raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")
        self.total_steps = total_steps
        self.final_factor = final_factor

    def __call__(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``."""
        progress = min(step, self.total_steps) / self.total_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_factor + (1.0 - self.final_factor) * cosine


def cosine_schedule(optimizer: Optimizer, total_steps: int, final_factor: float) -> LambdaLR:
    """Scheduler that decays every group's rate from its initial value by :class:`CosineDecay`.

    Call ``scheduler.step()`` once after every ``optimizer.step()``.
    """
    return LambdaLR(optimizer, CosineDecay(total_steps, final_factor))
