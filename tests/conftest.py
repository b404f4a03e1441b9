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
