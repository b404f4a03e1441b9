"""Compiled (inductor) bias profiles, used where they win, with a clean eager fallback.

The ``rbf`` and ``exponential`` profiles are compiled for inference (one fused loop instead
of the five to six passes over a tile of the eager path); see :func:`exp_family_profile`.
The ``tisa`` profile ``Σ_f a·exp(−b·(d−c)²)`` is elementwise work: in eager PyTorch it
costs about six passes over a ``[B, H, tq, tk]`` tile per basis function, and as many again
(plus reductions) for its parameters' gradients. ``torch.compile`` fuses the forward into
one loop and the backward into one reduction: on one CPU thread an 8×8×1024×512 tile with
F = 5 takes 1.9 s forward + backward compiled against 19.3 s eager, median of three on a
shared machine (``python benchmarks/bias_kernels.py``; benchmarks/results/bias_kernels.json).

Compiling costs tens of seconds once per process (and per dtype and grad mode), so only
tiles of at least :data:`MIN_ELEMENTS` scores are compiled. ``BSATNP_COMPILE=0`` never
compiles, ``BSATNP_COMPILE=1`` compiles tiles of any size (tests). When compiling fails
(no C++ compiler, an unsupported platform) one warning is given and the eager profile is
used from then on: the results are the same either way, to float round-off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from bsatnp.attention.numerics import exp_floored

MIN_ELEMENTS = 1 << 16
"""Smallest tile (``B·H·tq·tk`` scores) worth a compiled profile."""

Profile = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def tisa_term(dist: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """One ``tisa`` basis function ``a · exp(−b · (dist − c)²)`` (arguments broadcast).

    Terms that underflow are exactly 0 (:func:`exp_floored`): a subnormal ``exp`` made the
    SIR model's inference 12× slower on x86 (far cells with a sharp profile).
    """
    return a * exp_floored(-b * (dist - c).square())


def tisa_profile(dist: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``Σ_f a[..., f] · exp(−b[..., f] · (dist − c[..., f])²)``.

    Args:
        dist: Distances ``[B, 1, tq, tk]``.
        a: Amplitudes ``[1, H, 1, 1, F]``.
        b: Rates ``[1, H, 1, 1, F]``.
        c: Centres ``[1, H, 1, 1, F]``.

    Returns:
        Bias ``[B, H, tq, tk]``.
    """
    out = None
    for f in range(a.shape[-1]):
        term = tisa_term(dist, a[..., f], b[..., f], c[..., f])
        out = term if out is None else out + term
    assert out is not None
    return out


def exp_family_profile(r: Tensor, amp: Tensor, rate: Tensor) -> Tensor:
    """``Σ_u amp[..., u] · exp(−rate[..., u] · r)``: the ``rbf`` and ``exponential`` biases.

    Compiled for inference only (see :func:`bsatnp.attention.exp_basis.head_rates` for the
    grouping by distinct rate, which keeps one exponential per pair and head under the
    constant init); in training :func:`~bsatnp.attention.exp_basis.exp_basis` and its
    reducing backward serve. Underflowing terms are exactly 0 (:func:`exp_floored`).

    Args:
        r: ``d²`` (rbf) or ``d`` (exponential) ``[B, 1, tq, tk]``.
        amp: Summed amplitudes per distinct rate ``[1, H, 1, 1, U]``.
        rate: Distinct rates ``[1, H, 1, 1, U]``.

    Returns:
        Bias ``[B, H, tq, tk]``.
    """
    return (amp * exp_floored(-rate * r[..., None])).sum(-1)


EXP_FAMILY_WARMUP = 10**10
"""Scores the ``rbf``/``exponential`` profile computes eagerly in a process before it is
compiled: about what the compiled loop saves (~1 ns per score, 7 → 3 ms on a 4.2M-score
tile, ``benchmarks/bias_kernels.py``) in the ~5–10 s one compile takes, so short jobs (one
small prediction) never pay a compile they cannot earn back, and long ones compile early
on."""


def no_donated_buffers() -> AbstractContextManager[None]:
    """Compile, and run a retained backward, without AOTAutograd's donated buffers.

    A compiled backward that donates (reuses) its saved buffers refuses ``retain_graph``,
    which the tiled backend's kept bias graphs need (their backward may be run again, as
    eager graphs can be; the SIR training step failed on it). Profiles are compiled inside
    this context, and a retained backward through them runs inside it too: torch checks the
    setting again when the backward runs.
    """
    return torch._functorch.config.patch(donated_buffer=False)


class _Compiled:
    """One profile function, compiled on first use of a large tile; eager when that fails.

    ``inference_only`` profiles are checked by a forward without gradients when compiled;
    the others by a forward and a backward. ``warmup``: large-tile scores to compute eagerly
    in this process before compiling (counted by :meth:`wants`).
    """

    def __init__(self, fn: Profile, inference_only: bool = False, warmup: int = 0) -> None:
        self.fn = fn
        self.inference_only = inference_only
        self.warmup = warmup
        self.declined = 0  # large-tile scores left eager during the warm-up
        self.compiled: Profile | None = None
        self.failed = False

    def mode(self) -> str:
        """``"0"`` never compile, ``"1"`` always, ``"auto"`` for tiles of MIN_ELEMENTS."""
        value = os.environ.get("BSATNP_COMPILE", "auto")
        return value if value in ("0", "1") else "auto"

    def wants(self, numel: int) -> bool:
        """Whether a tile of ``numel`` scores takes the compiled path now.

        A large tile declined during the warm-up is counted towards it.

        Not inside another compilation, and not under a dispatch mode (e.g. the FLOP
        counter): a compiled function called under one is recompiled for it, and the eager
        graph it then caches made every later call several times slower.
        """
        mode = self.mode()
        if (self.failed or mode == "0" or torch.compiler.is_compiling()
                or is_in_torch_dispatch_mode()):
            return False
        if mode == "1":
            return True
        if numel < MIN_ELEMENTS:
            return False
        if self.declined < self.warmup:
            self.declined += numel
            return False
        return True

    def _compile(self, *args: Tensor) -> Profile | None:
        """Compile ``fn`` and run a small forward and backward on inputs like ``args``.

        Compiler errors surface here rather than in a later ``loss.backward()``.
        """
        try:
            inductor = torch.compile(self.fn, dynamic=True)

            def compiled(*tensors: Tensor) -> Tensor:
                with no_donated_buffers():  # at every call: a new shape compiles again
                    return inductor(*tensors)

            like = {"dtype": args[0].dtype, "device": args[0].device}
            dist = torch.rand(args[0].shape[0], 1, 3, 5, **like)
            if self.inference_only:
                with torch.no_grad():
                    compiled(dist, *(torch.rand(p.shape, **like) for p in args[1:]))
                return compiled
            with torch.inference_mode(False), torch.enable_grad():
                params = [torch.rand(p.shape, **like, requires_grad=True) for p in args[1:]]
                torch.autograd.grad(compiled(dist, *params).sum(), params)
            return compiled
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.failed = True
            warnings.warn(f"bsatnp: compiling {self.fn.__name__} failed, running it eagerly "
                          f"(same results, slower): {type(err).__name__}: {err}",
                          RuntimeWarning, stacklevel=3)
            return None

    def __call__(self, dist: Tensor, *params: Tensor) -> Tensor:
        numel = dist.shape[0] * params[0].shape[1] * dist.shape[-2] * dist.shape[-1]
        if self.wants(numel):
            if self.compiled is None:
                self.compiled = self._compile(dist, *params)
            if self.compiled is not None:
                return self.compiled(dist, *params)
        return self.fn(dist, *params)


tisa = _Compiled(tisa_profile)
"""The ``tisa`` profile: compiled for large tiles, eager otherwise."""
exp_family = _Compiled(exp_family_profile, inference_only=True, warmup=EXP_FAMILY_WARMUP)
"""The ``rbf``/``exponential`` profile without gradients: compiled for large tiles."""
