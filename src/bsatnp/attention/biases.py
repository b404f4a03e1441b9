"""Learnable attention biases computed from pairwise distances between points.

A :class:`DistanceBias` turns the distance ``d`` between a query and a key in one role
(space ``s``, time ``t`` or fixed effects ``x``) into one additive score per head:

* ``rbf``:          ``Σ_f a[h,f] · exp(−b[h,f] · d²)`` (RBF network, the default),
* ``exponential``:  ``Σ_f a[h,f] · exp(−b[h,f] · d)``,
* ``tisa``:         ``Σ_f a[h,f] · exp(−b[h,f] · (d − c[h,f])²)`` (translation-invariant
  self-attention profile),
* ``scalar``:       ``a[h] · d``.

An :class:`AttentionBias` sums the biases of several roles. Biases are evaluated on
*tiles* of queries × keys by the attention backends, so the full ``[Lq, Lk]`` matrix is
never needed. Parameters are used as they are (no positivity transform), as in the
reference implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from bsatnp.attention import compiled
from bsatnp.attention.compiled import tisa_term
from bsatnp.attention.exp_basis import exp_basis, head_rates
from bsatnp.attention.numerics import builds_graph
from bsatnp.config import check_literals
from bsatnp.geometry import (
    BOX_DISTANCES,
    DISTANCES,
    Components,
    Distance,
    pairwise_components,
)

BiasRole = Literal["s", "t", "x"]
BiasFamily = Literal["rbf", "exponential", "tisa", "scalar"]
BiasInit = Literal["constant", "spread"]
BIAS_FAMILIES: tuple[str, ...] = get_args(BiasFamily)
INITS: tuple[str, ...] = get_args(BiasInit)


@dataclass(frozen=True)
class BiasSpec:
    """Configuration of the bias of one role.

    Attributes:
        role: Which coordinates the bias reads: ``"s"``, ``"t"`` or ``"x"``.
        family: One of ``rbf``, ``exponential``, ``tisa``, ``scalar``.
        distance: One of ``euclidean``, ``great_circle`` (radians), ``great_circle_degrees``,
            ``abs``.
        num_basis: Number of basis functions ``F`` per head (ignored for ``scalar``).
        init: ``"constant"`` (a = b = 1, c = 0; the reference's init) or ``"spread"``
            (symmetry breaking: b log-spaced over [0.1, 100], c spread over [0, 1]).
    """

    role: BiasRole = "s"
    family: BiasFamily = "rbf"
    distance: Distance = "euclidean"
    num_basis: int = 5
    init: BiasInit = "constant"

    def __post_init__(self) -> None:
        check_literals(self)
        if self.num_basis < 1:
            raise ValueError(f"BiasSpec.num_basis must be >= 1, got {self.num_basis}")


class DistanceBias(nn.Module):
    """Bias of one role: distance between coordinates → one score per head.

    Args:
        spec: What to compute (role, family, distance, basis count, init).
        num_heads: Number of attention heads ``H``.
    """

    def __init__(self, spec: BiasSpec, num_heads: int) -> None:
        super().__init__()
        self.spec = spec
        self.num_heads = num_heads
        self._distance, self._returns_squared = DISTANCES[spec.distance]
        F = 1 if spec.family == "scalar" else spec.num_basis
        self.a = nn.Parameter(torch.ones(num_heads, F))
        if spec.family != "scalar":
            self.b = nn.Parameter(torch.ones(num_heads, F))
        if spec.family == "tisa":
            self.c = nn.Parameter(torch.zeros(num_heads, F))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``a``, ``b`` (and ``c``) according to ``spec.init``."""
        with torch.no_grad():
            self.a.fill_(1.0)
            if self.spec.family == "scalar":
                return
            if self.spec.init == "constant":
                self.b.fill_(1.0)
            else:
                F = self.b.shape[1]
                self.b.copy_(torch.logspace(-1, 2, F).expand_as(self.b))
            if self.spec.family == "tisa":
                if self.spec.init == "constant":
                    self.c.zero_()
                else:
                    self.c.copy_(torch.linspace(0, 1, self.c.shape[1]).expand_as(self.c))

    def distance(self, coords_q: Components, coords_k: Components) -> Tensor:
        """What the profile reads: d² for ``rbf``, d otherwise.

        Args:
            coords_q: Query coordinate components (one broadcastable tensor per axis).
            coords_k: Key coordinate components.
        """
        d = self._distance(coords_q, coords_k)
        if self.spec.family == "rbf":
            return d if self._returns_squared else d.square()
        return d.sqrt() if self._returns_squared else d

    def basis_term(self, dist: Tensor, a: Tensor, b: Tensor | None, c: Tensor | None) -> Tensor:
        """Bias of one basis function; its parameters (no basis axis) broadcast against ``dist``.

        The fused kernel calls it with scalars for one (query, key) pair and one head.
        """
        family = self.spec.family
        if family == "scalar":
            return a * dist
        assert b is not None
        if family == "tisa":
            assert c is not None
            return tisa_term(dist, a, b, c)
        return a * torch.exp(-b * dist)  # rbf (dist is d²) and exponential (dist is d)

    def reach(self) -> float | None:
        """A distance beyond which this bias is exactly 0 for every head, or ``None``.

        Each basis term underflows to exactly 0 far enough out: ``tisa`` through
        :func:`exp_floored` (exponent below −80), ``rbf`` and ``exponential`` through
        :func:`exp_` (exponent at most −87). The reach keeps a margin of one unit in the
        exponent (81 and 88), far above float32 round-off in the distances. Terms with
        ``a = 0`` never contribute; a term with ``b ≤ 0`` or the ``scalar`` family has no
        reach (``None``). In the units of ``spec.distance``, unsquared.
        """
        a, b, c = (None if p is None else p.detach().double() for p in self.params())
        active = a != 0
        if not bool(active.any()):
            return 0.0
        if b is None or not bool((b[active] > 0).all()):
            return None
        rate = b[active]
        family = self.spec.family
        if family == "rbf":  # b·d² ≥ 88
            return float((88.0 / rate).sqrt().max())
        if family == "exponential":  # b·d ≥ 88
            return float((88.0 / rate).max())
        assert c is not None  # tisa: b·(d − c)² ≥ 81 on the far side of c
        return max(0.0, float((c[active] + (81.0 / rate).sqrt()).max()))

    def params(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(a, b, c)``, each ``[H, F]`` or ``None`` where the family has no such parameter."""
        return self.a, getattr(self, "b", None), getattr(self, "c", None)

    def forward(self, coords_q: Tensor, coords_k: Tensor) -> Tensor:
        """Bias ``[B, H, Lq, Lk]`` between ``coords_q [B, Lq, D]`` and ``coords_k [B, Lk, D]``."""
        dist = self.distance(*pairwise_components(coords_q, coords_k))
        if self.spec.family in ("rbf", "exponential"):
            B, Lq, Lk = dist.shape
            grouped = None
            if not builds_graph(bias=self) and compiled.exp_family.wants(
                    B * self.num_heads * Lq * Lk):
                grouped = head_rates(self.a.detach(), self.b.detach())
            if grouped is None:
                return exp_basis(dist, self.a, self.b)
            rate, amp = (p.view(1, self.num_heads, 1, 1, -1) for p in grouped)
            return compiled.exp_family(dist[:, None], amp, rate)
        if self.spec.family == "scalar":
            return self.a.view(1, -1, 1, 1) * dist[:, None]
        H = self.num_heads
        a, b, c = (p.view(1, H, 1, 1, -1) for p in self.params())  # type: ignore[union-attr]
        return compiled.tisa(dist[:, None], a, b, c)

    def extra_repr(self) -> str:
        """Role, family, distance and basis count, for ``print(model)``."""
        s = self.spec
        return f"role={s.role}, family={s.family}, distance={s.distance}, F={self.a.shape[1]}"


class AttentionBias(nn.Module):
    """Sum of per-role distance biases, evaluated on any tile of queries × keys.

    Args:
        specs: One :class:`BiasSpec` per biased role (roles must be distinct).
        num_heads: Number of attention heads ``H``.
    """

    def __init__(self, specs: tuple[BiasSpec, ...], num_heads: int) -> None:
        super().__init__()
        roles = [s.role for s in specs]
        if len(set(roles)) != len(roles):
            raise ValueError(f"AttentionBias: each role may have one bias, got roles {roles}")
        self.terms = nn.ModuleList(DistanceBias(s, num_heads) for s in specs)
        self.num_heads = num_heads

    @property
    def roles(self) -> tuple[str, ...]:
        """Roles whose coordinates this bias reads."""
        return tuple(t.spec.role for t in self.terms)

    def reaches(self) -> dict[str, tuple[str, float]] | None:
        """``{role: (distance name, reach)}`` beyond which every term is exactly 0.

        ``None`` when some term never vanishes (see :meth:`DistanceBias.reach`) or measures
        a distance without a box bound (:data:`BOX_DISTANCES`).
        """
        out = {}
        for term in self.terms:
            reach = term.reach()
            if reach is None or term.spec.distance not in BOX_DISTANCES:
                return None
            out[term.spec.role] = (term.spec.distance, reach)
        return out

    def forward(self, coords_q: Mapping[str, Tensor], coords_k: Mapping[str, Tensor]) -> Tensor:
        """Bias ``[B, H, Lq, Lk]`` from per-role coordinates ``{role: [B, L, D]}``."""
        out = None
        for term in self.terms:
            role = term.spec.role
            value = term(coords_q[role], coords_k[role])
            out = value if out is None else out + value
        if out is None:
            raise ValueError("AttentionBias has no terms")
        return out


def slice_coords(coords: Mapping[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    """Rows ``start:stop`` of every role's coordinates ``{role: [B, L, D]}``."""
    return {role: value[:, start:stop] for role, value in coords.items()}
