"""Training batches drawn ahead of the training loop in worker processes.

A task whose batches are expensive to draw (a GP field over a few thousand points costs
about 0.3 s of single-threaded numpy per task) starves a GPU: the step waits for its data.
:class:`Prefetcher` draws the next batches in a pool of processes while the model trains.

The stream stays reproducible and resumes exactly: each call takes one seed from the
trainer's generator (so the generator's state, saved in every checkpoint, still says where
the stream is) and returns ``draw(seed)``. The seeds of the batches drawn ahead come from
a copy of that generator, so they are the seeds the next calls will take; when the
generator says otherwise (the first call, a resume, a generator used elsewhere in between)
the look-ahead is dropped and restarted from its state. The batches therefore depend on
the seed only, never on the number of workers or on timing.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from bsatnp.batch import Batch

__all__ = ["Prefetcher", "SeededDraw", "next_seed"]

SeededDraw = Callable[[int], Batch]
"""Draws one batch from a seed; must be picklable (a module-level function or an object)."""


def next_seed(generator: torch.Generator) -> int:
    """One 63-bit seed from ``generator`` (advancing it by one draw)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator))


def _one_thread() -> None:
    """Worker start-up: one intra-op thread each, so the workers share the cores."""
    torch.set_num_threads(1)


class Prefetcher:
    """``generator -> Batch`` for :class:`~bsatnp.train.trainer.Trainer`, drawn ahead.

    Args:
        draw: Draws the batch of one seed (picklable; it runs in the workers).
        workers: Worker processes (0: draw in the calling process, nothing ahead; the
            batches are the same either way).
        depth: Batches kept in flight (default: twice the workers).

    Raises:
        ValueError: If ``workers`` or ``depth`` is negative.
    """

    def __init__(self, draw: SeededDraw, workers: int, depth: int | None = None) -> None:
        if workers < 0 or (depth is not None and depth < 1):
            raise ValueError(f"need workers >= 0 and depth >= 1, got {workers}, {depth}")
        self.draw = draw
        self.workers = workers
        self.depth = 2 * workers if depth is None else depth
        self._pool: ProcessPoolExecutor | None = None
        self._ahead = torch.Generator()
        self._queue: deque[tuple[int, Future[Batch]]] = deque()

    def __call__(self, generator: torch.Generator) -> Batch:
        """The batch of the next seed ``generator`` draws."""
        seed = next_seed(generator)
        if self.workers == 0:
            return self.draw(seed)
        if self._queue and self._queue[0][0] == seed:
            future = self._queue.popleft()[1]
        else:  # the generator is not where the look-ahead expected it: restart from it
            self._drop_queue()
            self._ahead.set_state(generator.get_state())
            future = self._submit(seed)
        while len(self._queue) < self.depth:
            ahead = next_seed(self._ahead)
            self._queue.append((ahead, self._submit(ahead)))
        return future.result()

    def close(self) -> None:
        """Stop the workers (batches in flight are dropped); a later call starts new ones."""
        self._drop_queue()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, seed: int) -> Future[Batch]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_one_thread)
        return self._pool.submit(self.draw, seed)

    def _drop_queue(self) -> None:
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
