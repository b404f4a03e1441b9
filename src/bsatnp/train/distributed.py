"""Data-parallel training on PyTorch's distributed engine (``torchrun``, DDP).

Under ``torchrun --nproc_per_node N`` every process (rank) draws the same global batch of
``train.batch_size`` tasks from the same generator and trains on its slice of ``B / N``
tasks; :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients, and the
loss of each slice is scaled so that the average is the NLL over the whole global batch.
Every rank therefore takes the step a single process would take on the same global batch
(to float round-off), the data stay reproducible, and a resume restores one generator for
all ranks. Rank 0 alone writes the log and the checkpoints.

Backends: NCCL when training on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import Tensor

from bsatnp.batch import Batch


@dataclass(frozen=True)
class Replicas:
    """This process's place among the data-parallel processes.

    Attributes:
        rank: Index of this process, ``0 … world_size − 1``.
        world_size: Number of processes.
    """

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    def shard(self, batch: Batch) -> Batch:
        """This rank's contiguous slice of the tasks of a global batch.

        Raises:
            ValueError: If the batch size is not a multiple of the number of processes.
        """
        B = batch.batch_size
        if B % self.world_size:
            raise ValueError(f"train.batch_size={B} is not divisible by the {self.world_size} "
                             "data-parallel processes")
        size = B // self.world_size
        part = slice(self.rank * size, (self.rank + 1) * size)
        return Batch(**{f.name: None if getattr(batch, f.name) is None
                        else getattr(batch, f.name)[part] for f in fields(batch)})

    def total(self, value: Tensor) -> Tensor:
        """Sum of ``value`` over the processes (a new tensor)."""
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def replicas_from_environment(device: torch.device) -> Replicas | None:
    """Join the process group ``torchrun`` describes, or ``None`` for a single process.

    Reads ``WORLD_SIZE``/``RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) as set by torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Replicas(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """The CUDA device of this process under torchrun (``LOCAL_RANK``); others unchanged."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
