"""Learning-rate schedule: optional linear warm-up, then cosine decay to a fraction of the rate."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class CosineDecay:
    """Multiplier of the base learning rate: ``1`` after warm-up, ``final_factor`` at the end.

    During ``warmup_steps`` the factor rises linearly, ``(k + 1)/warmup``; then
    ``factor(k) = final + (1 − final)·½·(1 + cos(π·p))`` with ``p`` the fraction of the
    remaining ``total − warmup`` steps done; after ``total_steps`` it stays at
    ``final_factor``. Without warm-up it is the paper's schedule (SPEC §7). A callable
    object rather than a function so that :class:`~torch.optim.lr_scheduler.LambdaLR`
    saves its settings in its ``state_dict``.

    Args:
        total_steps: Steps over which the rate decays (SPEC §7: 100,000).
        final_factor: Final rate as a fraction of the base rate (SPEC §7: 2e-5).
        warmup_steps: Steps of linear warm-up (0: none), fewer than ``total_steps``.
    """

    def __init__(self, total_steps: int, final_factor: float, warmup_steps: int = 0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps), got {warmup_steps}")
        if not 0.0 <= final_factor <= 1.0:
            raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")
        self.total_steps = total_steps
        self.final_factor = final_factor
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``."""
        warmup = getattr(self, "warmup_steps", 0)  # schedulers saved before warm-up existed
        if step < warmup:
            return (step + 1) / warmup
        progress = (min(step, self.total_steps) - warmup) / (self.total_steps - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_factor + (1.0 - self.final_factor) * cosine


def cosine_schedule(optimizer: Optimizer, total_steps: int, final_factor: float,
                    warmup_steps: int = 0) -> LambdaLR:
    """Scheduler that scales every group's initial rate by :class:`CosineDecay`.

    Call ``scheduler.step()`` once after every ``optimizer.step()``.
    """
    return LambdaLR(optimizer, CosineDecay(total_steps, final_factor, warmup_steps))
