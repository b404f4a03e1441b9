"""Reduced-precision inference on CUDA: TF32 or bf16 matrix products, fp32 accumulation.

``with inference_precision("tf32"): model(batch)`` (or around ``Conditioned.predict``):

* ``"fp32"``: plain float32 (the default outside the context).
* ``"tf32"``: float32 matrix products on TF32 tensor cores (inputs rounded to a 10-bit
  mantissa, fp32 accumulation); coordinates, biases and softmax statistics stay float32.
* ``"bf16"``: CUDA autocast to bfloat16 (linear layers and attention products in bf16 with
  fp32 accumulation); coordinates and the distance biases are computed in float32 from the
  float32 inputs, so translation invariance is unaffected.

Both trade accuracy for speed on GPUs with tensor cores; measure the error on your problem
(``benchmarks/sir_scaling.py --precision fp32,tf32,bf16`` reports it against fp32 on the same
batches). Not yet measured here: no GPU has been lent since this was written, and the bf16
path assumes the CUDA default backend for inference (flex), which reads float32 coordinates
inside its kernel. On the CPU every mode computes in float32 (no such fast path here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def inference_precision(mode: str = "fp32") -> Iterator[None]:
    """Run the enclosed CUDA computations at ``mode`` (see the module docstring).

    Args:
        mode: ``"fp32"``, ``"tf32"`` or ``"bf16"``.

    Raises:
        ValueError: For any other mode.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {mode!r}")
    previous = torch.get_float32_matmul_precision()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if mode == "bf16" and torch.cuda.is_available() else contextlib.nullcontext())
    try:
        if mode == "tf32" and torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")
        with autocast:
            yield
    finally:
        torch.set_float32_matmul_precision(previous)
