"""Reduced precision: inference on CUDA (TF32 or bf16) and bf16 mixed-precision training.

**Inference on CUDA**: TF32 or bf16 matrix products, fp32 accumulation.

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
inside its kernel. On the CPU every inference mode computes in float32.

**Training** (``TrainConfig.precision``; :func:`training_precision` around the forward):

* ``"fp32"``: plain float32.
* ``"bf16"``: autocast to bfloat16 on the model's device. The linear layers (token
  embedding, attention projections, feed-forward networks) multiply in bf16 with fp32
  accumulation; the weights, the optimiser and the gradients stay float32. Three parts stay
  float32 on purpose: the residual stream (the token embedding returns float32), biased
  attention on the CPU (distances, bias, scores and softmax; :func:`full_precision`), and
  the likelihood head, so the loss and the predictive's parameters are float32. On a CPU
  with bf16 matrix units (AMX, :func:`cpu_has_bf16_matrix_units`) the 2D-GP step measured
  1.07× the speed of float32 (``benchmarks/train_profile.py --variants fp32/eager,bf16/eager``): the
  linear layers are a small share of it, the attention's score tiles the large one. Without
  such units bf16 is slower than float32 and a warning says so. Models trained this way
  are evaluated in float32.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
TRAINING_PRECISIONS = ("fp32", "bf16")


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


@functools.cache
def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AMX, read from /proc/cpuinfo).

    ``False`` where the file is missing (not Linux) or names no ``amx_bf16`` flag.
    """
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def check_training_precision(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`TRAINING_PRECISIONS`."""
    if mode not in TRAINING_PRECISIONS:
        raise ValueError(f"training precision must be one of {TRAINING_PRECISIONS}, got {mode!r}")


@contextlib.contextmanager
def training_precision(mode: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed training forward at ``mode`` on ``device`` (see the module docstring).

    Raises:
        ValueError: For a mode other than ``"fp32"`` and ``"bf16"``.
    """
    check_training_precision(mode)
    device_type = torch.device(device).type
    if mode == "fp32":
        yield
        return
    if device_type == "cpu" and not cpu_has_bf16_matrix_units():
        warnings.warn("precision bf16 on a CPU without bf16 matrix units (AMX): the step is "
                      "slower than in fp32; use precision: fp32 on this machine", stacklevel=3)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        yield


def full_precision(device_type: str) -> contextlib.AbstractContextManager[None]:
    """A block computed in the inputs' own precision: autocast off on ``device_type``.

    Its callers cast their inputs to float32 (``tensor.float()``) inside the block.
    """
    return torch.autocast(device_type, enabled=False)
