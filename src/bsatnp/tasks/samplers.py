"""Generic ways to turn drawn points into context and test sets (shared by every task).

The equivalents of spatial, spatiotemporal and tabular data samplers: a split of points
on a field (:func:`split_context_test`, :func:`context_test_indices`), a window of frames
over time (:func:`time_window`) with per-frame context (:func:`frame_context`), and windows
over time-sorted table rows (:func:`row_windows`). Every function takes its randomness from
a ``torch.Generator`` and returns index tensors and masks, so a task keeps control of what
the points carry (locations, times, covariates, values).
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


def context_test_indices(
    batch_size: int, n_points: int, n_ctx: int, n_test: int, min_ctx: int, max_ctx: int,
    generator: torch.Generator | None, shared_permutation: bool = False,
    test_includes_context: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of context and test points among ``n_points`` shared points.

    The points are permuted as in :func:`split_context_test`; the context slots are the
    first ``n_ctx`` permuted points. The test set is the next ``n_test`` points (disjoint
    from the context), or, with ``test_includes_context``, the first ``n_test`` permuted
    points, which contain every context slot (the SIR protocol: ``n_test >= n_ctx``).

    Returns:
        ``(ctx [B, n_ctx], mask_ctx [B, n_ctx], test [B, n_test])`` index tensors and mask.

    Raises:
        ValueError: If the sets do not fit in ``n_points``.
    """
    if test_includes_context:
        if not n_ctx <= n_test <= n_points:
            raise ValueError(f"need n_ctx <= n_test <= n_points, got {n_ctx}, {n_test}, "
                             f"{n_points}")
    elif n_ctx + n_test > n_points:
        raise ValueError(f"n_ctx + n_test = {n_ctx + n_test} exceeds n_points = {n_points}")
    perm, mask = split_context_test(batch_size, n_points, n_ctx, min_ctx, max_ctx, generator,
                                    shared_permutation)
    first_test = 0 if test_includes_context else n_ctx
    return perm[:, :n_ctx], mask, perm[:, first_test:first_test + n_test]


def time_window(n_times: int, window: int, generator: torch.Generator | None,
                target: str = "last") -> tuple[Tensor, int]:
    """A window of ``window`` consecutive time steps at a uniformly random position.

    Args:
        n_times: Time steps available.
        window: Steps in the window (context frames plus the target frame).
        generator: Source of randomness.
        target: ``"last"`` (forecast the last frame from the earlier ones) or ``"middle"``
            (interpolate the middle frame from those around it).

    Returns:
        ``(steps [window], target)``: the window's time indices and the position of the
        target frame within it.
    """
    if not 1 <= window <= n_times:
        raise ValueError(f"need 1 <= window <= n_times, got {window}, {n_times}")
    if target not in ("last", "middle"):
        raise ValueError(f"target must be 'last' or 'middle', got {target!r}")
    start = int(torch.randint(0, n_times - window + 1, (1,), generator=generator))
    return torch.arange(start, start + window), window - 1 if target == "last" else window // 2


def frame_context(
    batch_size: int, n_frames: int, n_locations: int, n_slots: int, min_ctx: int,
    max_ctx: int, generator: torch.Generator | None, shared: bool = False,
) -> tuple[Tensor, Tensor]:
    """Context locations of each frame of a space-time window, drawn independently per frame.

    Every frame takes its own random ``n_slots`` of the ``n_locations`` shared locations,
    of which the first ``k ~ U{min_ctx, …, max_ctx}`` are valid; with ``shared`` the tasks
    of the batch share them (the Gneiting and ERA5 protocols), else each task draws its own.

    Returns:
        ``(index [B, F, n_slots], mask [B, F, n_slots])``: location indices and validity.
    """
    if not 1 <= min_ctx <= max_ctx <= n_slots <= n_locations:
        raise ValueError("need 1 <= min_ctx <= max_ctx <= n_slots <= n_locations, got "
                         f"{min_ctx}, {max_ctx}, {n_slots}, {n_locations}")
    rows = 1 if shared else batch_size
    keys = torch.rand(rows * n_frames, n_locations, generator=generator)
    index = keys.argsort(dim=1)[:, :n_slots].reshape(rows, n_frames, n_slots)
    mask = valid_prefix_mask(rows * n_frames, n_slots, min_ctx, max_ctx, generator)
    mask = mask.reshape(rows, n_frames, n_slots)
    return (index.expand(batch_size, -1, -1), mask.expand(batch_size, -1, -1))


def row_windows(n_rows: int, window: int, batch_size: int,
                generator: torch.Generator | None, distinct: bool = True) -> Tensor:
    """Row indices of ``batch_size`` windows of ``window`` consecutive rows of a table.

    For time-sorted rows (the Beijing protocol: context = the first rows of a window,
    test = the rest). Window starts are uniform, distinct within the batch when
    ``distinct``.

    Returns:
        ``[B, window]`` row indices, each row a contiguous range.
    """
    n_starts = n_rows - window + 1
    if window < 1 or n_starts < (batch_size if distinct else 1):
        raise ValueError(f"cannot draw {batch_size} windows of {window} rows from {n_rows}")
    if distinct:
        starts = torch.randperm(n_starts, generator=generator)[:batch_size]
    else:
        starts = torch.randint(0, n_starts, (batch_size,), generator=generator)
    return starts[:, None] + torch.arange(window)[None, :]
