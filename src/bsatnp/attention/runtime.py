"""How biased attention runs, never what it computes: one runtime object, entered as a context.

:class:`AttentionRuntime` holds the execution policy: whether bias profiles are compiled,
whether the tiled scan skips tiles beyond a bias's reach, and the inference precision on
CUDA. Every setting gives the same results to float round-off (precision excepted: it trades
accuracy for speed on purpose). Enter one for a block of work::

    with attention_runtime(compile="never", far_tiles=False):
        model(batch)

Outside any block the defaults hold, with the environment as an override for a whole
process (``BSATNP_COMPILE=0|1|auto``, ``BSATNP_FAR_TILES=0``): what benchmarks that switch
a policy in a child process use. An explicit block wins over the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from bsatnp.config import Config, check_literals
from bsatnp.precision import inference_precision

Compile = Literal["auto", "always", "never"]
Precision = Literal["fp32", "tf32", "bf16"]


@dataclass(frozen=True)
class AttentionRuntime(Config):
    """The execution policy of biased attention.

    Attributes:
        compile: Bias profiles compiled by inductor ``always``, ``never``, or ``auto``
            (after a warm-up, on tiles large enough to earn the compile back; see
            :mod:`bsatnp.attention.compiled`). ``never`` keeps the compiler out of the
            process (a memory bound needs that).
        far_tiles: Skip the tiles of the tiled scan beyond the bias's reach
            (:mod:`bsatnp.attention.locality`).
        precision: CUDA inference precision (:mod:`bsatnp.precision`).
    """

    compile: Compile = "auto"
    far_tiles: bool = True
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_literals(self)


_ENVIRONMENT_COMPILE = {"0": "never", "1": "always", "auto": "auto"}
_CURRENT: contextvars.ContextVar[AttentionRuntime | None] = contextvars.ContextVar(
    "bsatnp_attention_runtime", default=None)


def default_runtime() -> AttentionRuntime:
    """The defaults, with the environment's overrides (``BSATNP_COMPILE``, ``BSATNP_FAR_TILES``)."""
    compile_ = _ENVIRONMENT_COMPILE.get(os.environ.get("BSATNP_COMPILE", "auto"), "auto")
    return AttentionRuntime(compile=compile_,  # type: ignore[arg-type]
                            far_tiles=os.environ.get("BSATNP_FAR_TILES") != "0")


def current_runtime() -> AttentionRuntime:
    """The runtime in force: the innermost :func:`attention_runtime` block's, else the default."""
    return _CURRENT.get() or default_runtime()


@contextlib.contextmanager
def attention_runtime(runtime: AttentionRuntime | None = None,
                      **changes: object) -> Iterator[AttentionRuntime]:
    """Run the block under ``runtime`` (default: the one in force) with ``changes`` applied.

    Blocks nest; leaving one restores the outer runtime.

    Raises:
        ValueError: On an unknown setting or value.
        TypeError: On an unknown keyword.
    """
    chosen = replace(runtime or current_runtime(), **changes)  # type: ignore[arg-type]
    token = _CURRENT.set(chosen)
    try:
        with inference_precision(chosen.precision):
            yield chosen
    finally:
        _CURRENT.reset(token)
