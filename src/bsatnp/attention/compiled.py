"""Compiled (inductor) bias profiles, used where they win, with a clean eager fallback.

The ``rbf`` and ``exponential`` profiles are compiled for inference (one fused loop instead
of the five to six passes over a tile of the eager path); see :func:`exp_family_profile`.
The ``tisa`` profile ``Σ_f a·exp(−b·(d−c)²)`` is elementwise work: in eager PyTorch it
costs about six passes over a ``[B, H, tq, tk]`` tile per basis function, and as many again
(plus reductions) for its parameters' gradients. ``torch.compile`` fuses the forward into
one loop and the gradients, which recompute the terms (:class:`_RecomputedBackward`), into
one reduction: on two CPU threads an 8×8×1024×512 tile with F = 5 takes 0.61 s forward +
backward compiled against 7.5 s eager (``python benchmarks/bias_kernels.py --threads 2
--rounds 3``; benchmarks/results/bias_kernels.json).

Compiling costs tens of seconds once per process (and per dtype), so only
tiles of at least :data:`MIN_ELEMENTS` scores are compiled. The attention runtime decides
(:mod:`bsatnp.attention.runtime`): ``compile="never"`` never compiles (a run bounded in
memory: the compiler itself takes about 100 MB), ``"always"`` compiles tiles of any size
(tests); ``BSATNP_COMPILE=0|1`` sets the process default. When compiling fails
(no C++ compiler, an unsupported platform) one warning is given and the eager profile is
used from then on: the results are the same either way, to float round-off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from bsatnp.attention.numerics import builds_graph, exp_floored
from bsatnp.attention.runtime import current_runtime

MIN_ELEMENTS = 1 << 16
"""Smallest tile (``B·H·tq·tk`` scores) worth a compiled profile."""

Profile = Callable[..., Tensor]
"""``profile(dist, *params) -> bias``."""
Grads = Callable[..., tuple[Tensor, ...]]
"""``grads(grad_bias, dist, *params) -> one gradient per parameter``."""


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


def tisa_profile_grads(grad: Tensor, dist: Tensor, a: Tensor, b: Tensor,
                       c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`tisa_profile` for ``a``, ``b``, ``c``, recomputing its terms.

    With ``e = exp_floored(−b·u²)``, ``u = dist − c``: ``∂/∂a = e``, ``∂/∂b = −a·e·u²``,
    ``∂/∂c = 2·a·b·e·u`` (all 0 where the term underflowed), each multiplied by ``grad`` and
    summed over the pairs the parameter broadcasts to.

    Args:
        grad: Gradient of the bias ``[B, H, tq, tk]``.
        dist: Distances ``[B, 1, tq, tk]``.
        a: Amplitudes ``[1, H, 1, 1, F]``.
        b: Rates ``[1, H, 1, 1, F]``.
        c: Centres ``[1, H, 1, 1, F]``.

    Returns:
        Gradients shaped like ``a``, ``b``, ``c``.
    """
    grads: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for f in range(a.shape[-1]):
        a_f, b_f, c_f = a[..., f], b[..., f], c[..., f]
        u = dist - c_f
        u2 = u.square()
        ge = grad * exp_floored(-b_f * u2)
        age = a_f * ge
        grads[0].append(ge.sum_to_size(a_f.shape))
        grads[1].append((-age * u2).sum_to_size(b_f.shape))
        grads[2].append((2 * b_f * age * u).sum_to_size(c_f.shape))
    return tuple(torch.stack(g, -1) for g in grads)  # type: ignore[return-value]


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


TISA_WARMUP = 2 * 10**8
"""Scores the ``tisa`` profile computes eagerly in a process before it is compiled: about
what the ~6 s of a compile (with inductor's disk cache warm; 15–35 s cold) earns back. The
shipped SIR model's forward at 512 context / 1,024 test (1.9·10⁷ scores) takes 0.66 s eager
and 0.17 s compiled, ~26 ns saved per score (``python benchmarks/compiled_forward.py --model
sir``), so about ten such predictions run eagerly first; training compiles within its first
two steps."""


class _RecomputedBackward(torch.autograd.Function):
    """A profile whose backward recomputes its terms: nothing per score is saved.

    Left to autograd (compiled or not), the ``tisa`` profile saved its terms' masks and
    exponentials for the backward, several floats per score, and its compiled forward ran
    8× slower for writing them (``exp_floored``'s ``where`` made the partitioner save them).
    No gradient flows to the distances (as in :func:`~bsatnp.attention.exp_basis.exp_basis`).
    """

    @staticmethod
    def forward(ctx: Any, fn: Profile, grads: Grads, dist: Tensor,  # type: ignore[override]
                *params: Tensor) -> Tensor:
        ctx.grads = grads
        ctx.save_for_backward(dist, *params)
        return fn(dist, *params)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        dist, *params = ctx.saved_tensors
        return None, None, None, *ctx.grads(grad, dist, *params)


class _Compiled:
    """One profile function, compiled on first use of a large tile; eager when that fails.

    Compiled functions only ever run without autograd: a profile with ``grads`` (its
    parameters' gradients, recomputing the terms) is differentiated through
    :class:`_RecomputedBackward`, compiled or eager alike; one without ``grads`` is compiled
    for inference and runs eagerly where a gradient is needed. The gradients are compiled
    only once a gradient is first wanted, so inference pays one compile. ``warmup``:
    large-tile scores to compute eagerly in this process before compiling (counted by
    :meth:`wants`).
    """

    def __init__(self, fn: Profile, grads: Grads | None = None, warmup: int = 0) -> None:
        self.fn = fn
        self.grads = grads
        self.warmup = warmup
        self.declined = 0  # large-tile scores left eager during the warm-up
        self.compiled: Profile | None = None
        self.compiled_grads: Grads | None = None
        self.failed = False

    def mode(self) -> str:
        """``"0"`` never compile, ``"1"`` always, ``"auto"`` for tiles of MIN_ELEMENTS.

        From the attention runtime in force (:mod:`bsatnp.attention.runtime`).
        """
        return {"never": "0", "always": "1"}.get(current_runtime().compile, "auto")

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

    def _compile(self, target: Callable[..., Any],
                 check: Callable[[Callable[..., Any]], object]) -> Any:
        """``target`` compiled and run once by ``check`` on small inputs, or ``None``.

        Compiler errors surface here rather than in a later ``loss.backward()``; after one,
        this profile stays eager.
        """
        try:
            compiled = torch.compile(target, dynamic=True)
            with torch.no_grad():
                check(compiled)
            return compiled
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.failed = True
            warnings.warn(f"bsatnp: compiling {target.__name__} failed, running it eagerly "
                          f"(same results, slower): {type(err).__name__}: {err}",
                          RuntimeWarning, stacklevel=5)
            return None

    def _compile_for(self, dist: Tensor, params: tuple[Tensor, ...], grads: bool) -> None:
        """Compile the profile, and its gradients if ``grads``.

        Each is checked on small inputs of the dtype and device of ``dist``.
        """
        like = {"dtype": dist.dtype, "device": dist.device}
        small = torch.rand(dist.shape[0], 1, 3, 5, **like)
        small_params = [torch.rand(p.shape, **like) for p in params]
        if self.compiled is None:
            self.compiled = self._compile(self.fn, lambda f: f(small, *small_params))
        if grads and self.grads is not None and self.compiled_grads is None and not self.failed:
            bias_grad = torch.rand(dist.shape[0], params[0].shape[1], 3, 5, **like)
            self.compiled_grads = self._compile(
                self.grads, lambda g: g(bias_grad, small, *small_params))

    def __call__(self, dist: Tensor, *params: Tensor) -> Tensor:
        """The profile of ``dist`` under ``params``, compiled or eager."""
        fn, grads = self.fn, self.grads
        differentiate = builds_graph(*params)
        numel = dist.shape[0] * params[0].shape[1] * dist.shape[-2] * dist.shape[-1]
        if (grads is not None or not differentiate) and self.wants(numel):
            if self.compiled is None or (differentiate and self.compiled_grads is None):
                self._compile_for(dist, params, differentiate)
            fn = self.compiled or fn
            grads = self.compiled_grads or grads
        if differentiate and grads is not None:
            return _RecomputedBackward.apply(fn, grads, dist.detach(), *params)
        if fn is self.fn:
            return fn(dist, *params)
        with torch.no_grad():
            return fn(dist, *params)


tisa = _Compiled(tisa_profile, tisa_profile_grads, warmup=TISA_WARMUP)
"""The ``tisa`` profile and its gradients: compiled for large tiles, eager otherwise."""
exp_family = _Compiled(exp_family_profile, warmup=EXP_FAMILY_WARMUP)
"""The ``rbf``/``exponential`` profile without gradients: compiled for large tiles."""
