"""Helpers shared by the benchmark scripts: timing, run metadata, peak RSS, JSON output and
the bias of a trained model.

The scripts run as ``python benchmarks/NAME.py``, so ``benchmarks/`` is on ``sys.path`` and
they import this module as ``common``. (``reference_runner.py`` runs in a foreign
environment without torch and keeps its own copies.)
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty
from typing import Any

import torch

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


def trained_bias(checkpoint: str | Path, family: str | None = None) -> AttentionBias:
    """A one-term :class:`AttentionBias` holding a trained model's first distance bias (of
    ``family`` if given), without gradients."""
    model = load_model(checkpoint, torch.device("cpu"))
    term = next(m for m in model.modules()
                if isinstance(m, DistanceBias) and family in (None, m.spec.family))
    bias = AttentionBias((term.spec,), term.num_heads)
    bias.terms[0].load_state_dict(term.state_dict())
    return bias.requires_grad_(False)
