"""Shared fixtures and paths for the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bsatnp import Batch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BSATNP_SHARED", ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "dl4bi_bsatnp_2dgp_fixture.npz"


def quantised(shape: tuple[int, ...], generator: torch.Generator, lo: float = -2.0,
              hi: float = 2.0) -> torch.Tensor:
    """Uniform coordinates on a 1/1024 grid: exactly representable after shifts up to 1e4."""
    u = lo + (hi - lo) * torch.rand(shape, generator=generator)
    return torch.round(u * 1024) / 1024


def random_batch(B: int = 2, Lc: int = 24, Lt: int = 16, seed: int = 0, dim_s: int = 2,
                 dim_x: int = 0, dim_t: int = 0, dim_f: int = 1, min_valid: int = 5) -> Batch:
    """A random batch with different valid context counts per task."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, Lc, dtype=torch.bool)
    for b in range(B):
        n = int(torch.randint(min_valid, Lc + 1, (1,), generator=g))
        mask[b, :n] = True
    fields = {
        "f_ctx": torch.randn(B, Lc, dim_f, generator=g),
        "f_test": torch.randn(B, Lt, dim_f, generator=g),
        "mask_ctx": mask,
    }
    for role, dim in (("s", dim_s), ("x", dim_x), ("t", dim_t)):
        if dim:
            fields[f"{role}_ctx"] = quantised((B, Lc, dim), g)
            fields[f"{role}_test"] = quantised((B, Lt, dim), g)
    return Batch(**fields)


@pytest.fixture
def batch() -> Batch:
    return random_batch()


def randomise_biases(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every basis function its own parameters so tests are sensitive to the bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".bias.terms." in name:
                p.copy_(p.abs() * (0.5 + torch.rand(p.shape, generator=g)))


def shifted(batch: Batch, shift: float | torch.Tensor) -> Batch:
    """``batch`` with every location (context and test) moved by ``shift``."""
    return batch.map(s_ctx=batch.s_ctx + shift, s_test=batch.s_test + shift)


def dropped(batch: Batch) -> Batch:
    """A one-task batch with its masked context slots removed (valid slots come first)."""
    n = int(batch.mask_ctx.sum())
    return batch.map(s_ctx=batch.s_ctx[:, :n], f_ctx=batch.f_ctx[:, :n], mask_ctx=None)


def with_nan_padding(batch: Batch) -> Batch:
    """``batch`` with far-away locations and NaN values in its padded context slots."""
    pad = ~batch.mask_ctx
    s, f = batch.s_ctx.clone(), batch.f_ctx.clone()
    s[pad], f[pad] = 1e4, float("nan")
    return batch.map(s_ctx=s, f_ctx=f)


def assert_same(d1, d2, atol: float = 1e-5) -> None:
    """Two predictive distributions agree in mean and stddev to ``atol``."""
    assert (d1.mean - d2.mean).abs().max() <= atol
    assert (d1.stddev - d2.stddev).abs().max() <= atol


class edited_checkpoint:  # noqa: N801 (a context manager used like a function)
    """Edit a checkpoint's metadata and tensors in place (written back on a clean exit).

    >>> with edited_checkpoint(path) as (metadata, tensors):
    ...     metadata["step"] = "3.7"
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as file:
            self.metadata = dict(file.metadata())
            self.tensors = {key: file.get_tensor(key) for key in file.keys()}
        return self.metadata, self.tensors

    def __exit__(self, *exc):
        from safetensors.torch import save_file

        if exc[0] is None:
            save_file(self.tensors, str(self.path), metadata=self.metadata)


def dead_pid() -> int:
    """The id of a process that has exited (and was reaped)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
