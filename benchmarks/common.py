"""Helpers shared by the benchmark scripts: timing, run metadata, peak RSS, JSON output,
matrix-product FLOPs and the bias of a trained model.

The scripts run as ``python benchmarks/NAME.py``, so ``benchmarks/`` is on ``sys.path`` and
they import this module as ``common``. (``reference_runner.py`` runs in a foreign
environment without torch and keeps its own copies.)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from bsatnp.attention import fused_cpu
from bsatnp.attention.biases import AttentionBias, DistanceBias
from bsatnp.io.checkpoint import load_model


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn`` (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_meta(threads: int | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata of this run: command line, versions, machine, threads, UTC date, ``extra``.

    ``threads`` defaults to ``torch.get_num_threads()``; ``extra`` entries are added last
    (and may override the standard ones).
    """
    return {
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_forked(name: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` in a forked process: its result and that process's peak RSS in MiB.

    Each call's peak RSS is its own (a fork starts from this process's memory, so the
    parent should hold little). A child that dies (killed for memory, say) ends the
    program with a line naming ``name`` and its exit code instead of waiting for ever.
    """
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child() -> None:
        queue.put((fn(*args), peak_rss_mb()))

    process = context.Process(target=child)
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise SystemExit(f"{name} died (exit code {process.exitcode})") from None
    process.join()
    return result


def write_json(path: str | Path, record: Any,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``record`` as indented UTF-8 JSON with a trailing newline, creating parent
    folders; ``default`` as in ``json.dumps``. Returns the path; prints nothing."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=default) + "\n", encoding="utf-8")
    return out


def save_figure(fig: Any, out_png: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as a PNG, creating parent folders. Returns the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _baddbmm_flops(self_shape: Any, batch1_shape: Any, batch2_shape: Any, *args: Any,
                   out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``self += batch1 @ batch2`` (``[b, m, k] @ [b, k, n]``): 2·b·m·n·k."""
    b, m, k = batch1_shape
    return 2 * b * m * batch2_shape[2] * k


def _sdpa_cpu_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                    out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of PyTorch's CPU flash attention forward (as for the CUDA kernels)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape: Any, query_shape: Any, key_shape: Any,
                             value_shape: Any, *args: Any, out_shape: Any = None,
                             **kwargs: Any) -> int:
    """FLOPs of PyTorch's CPU flash attention backward."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _conv_backward_flops(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any,
                         _stride: Any, _padding: Any, _dilation: Any, transposed: bool,
                         _output_padding: Any, _groups: Any, output_mask: Any, *args: Any,
                         out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of a convolution's backward: each gradient asked for (input, weight) costs what
    the forward does. The counter's own formula ignores ``groups`` in the weight's gradient
    and counts a depthwise 9×9 convolution's backward ~40× too high."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


EXTRA_FLOP_FORMULAS = {
    # Grouped (depthwise) convolutions: the counter's backward formula ignores the groups.
    torch.ops.aten.convolution_backward: _conv_backward_flops,
    # The tiled scan adds q·kᵀ onto the bias in place (baddbmm_).
    torch.ops.aten.baddbmm_: _baddbmm_flops,
    # Dense SDPA on the CPU runs these kernels, which the counter's registry lacks.
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _sdpa_cpu_backward_flops,
}
"""Formulas ``torch.utils.flop_counter`` lacks for ops our models run on the CPU."""


@contextlib.contextmanager
def matmul_gflops() -> Iterator[Callable[[], float]]:
    """Count the matrix-product GFLOPs of the enclosed block; the value, read after it.

    ``torch.utils.flop_counter`` with the formulas it lacks (:data:`EXTRA_FLOP_FORMULAS`), plus
    the products inside the fused C++ attention kernels, which no counter sees: per score
    ``2(D + Dv)`` in a forward (``q·kᵀ``, ``P·v``) and twice that more in the training backward
    (``dP``, ``dq``, ``dk``, ``dv``), over each task's valid keys.
    """
    fused = [0.0]
    training, inference = fused_cpu.training_attention, fused_cpu.attention

    def counted_training(q, k, v, *args):
        lengths = args[4]
        fused[0] += 6 * q.shape[1] * q.shape[2] * int(lengths.sum()) * (q.shape[3] + v.shape[-1])
        return training(q, k, v, *args)

    def counted_inference(q, k, v, *args):
        B, H, Lq, D = q.shape
        fused[0] += 2 * B * H * Lq * k.shape[2] * (D + v.shape[-1])
        return inference(q, k, v, *args)

    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    fused_cpu.training_attention, fused_cpu.attention = counted_training, counted_inference
    try:
        with counter:
            yield lambda: (counter.get_total_flops() + fused[0]) / 1e9
    finally:
        fused_cpu.training_attention, fused_cpu.attention = training, inference


def trained_bias(checkpoint: str | Path, family: str | None = None) -> AttentionBias:
    """A one-term :class:`AttentionBias` holding a trained model's first distance bias (of
    ``family`` if given), without gradients."""
    model = load_model(checkpoint, torch.device("cpu"))
    term = next(m for m in model.modules()
                if isinstance(m, DistanceBias) and family in (None, m.spec.family))
    bias = AttentionBias((term.spec,), term.num_heads)
    bias.terms[0].load_state_dict(term.state_dict())
    return bias.requires_grad_(False)
