"""Generic ways to turn drawn points into context and test sets (shared by every task).

Every function takes its randomness from a ``torch.Generator`` and returns index tensors
and masks, so a task keeps control of what the points carry (locations, times,
covariates, values).
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_context_test(
    batch_size: int, n_points: int, n_ctx: int, min_ctx: int, max_ctx: int,
    generator: torch.Generator | None, shared_permutation: bool = False,
) -> tuple[Tensor, Tensor]:
    """Random context/test split of ``n_points`` shared points for each task of a batch.

    Points are permuted (per task, or once for the batch when ``shared_permutation``); the
    first ``n_ctx`` permuted points are context slots, of which the first
    ``k ~ U{min_ctx, …, max_ctx}`` (drawn per task) are valid; the rest are test points.

    Returns:
        ``(perm [B, n_points], mask_ctx [B, n_ctx])``: ``perm[b]`` orders the points for
        task ``b``; valid context slots come first.
    """
    rows = 1 if shared_permutation else batch_size
    perm = torch.argsort(torch.rand(rows, n_points, generator=generator), dim=1)
    perm = perm.expand(batch_size, n_points)
    return perm, valid_prefix_mask(batch_size, n_ctx, min_ctx, max_ctx, generator)


def valid_prefix_mask(batch_size: int, n_slots: int, lo: int, hi: int,
                      generator: torch.Generator | None) -> Tensor:
    """``[B, n_slots]`` bool mask whose first ``k ~ U{lo, …, hi}`` slots (per row) are True."""
    n_valid = torch.randint(lo, hi + 1, (batch_size,), generator=generator)
    return torch.arange(n_slots)[None, :] < n_valid[:, None]
