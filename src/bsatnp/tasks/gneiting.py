"""Space-time GP with a non-separable Gneiting covariance (PROTOCOLS §6): forecast a frame.

256 locations on ``[−1, 1]²`` observed at 12 times ``linspace(0, 1, 12)``; a task is a window
of 5 consecutive times ending at a random one: frames 1–4 are the context (8–15 valid of 16
slots per frame, drawn independently per frame), frame 5 at all 256 locations is the test
set. Values are ``m(s, t) + f(s, t) + ε`` with a deterministic mean ``m`` (terrain, clock,
harmonics, interaction, trend and a moving bump), ``f`` a zero-mean GP with covariance

    C(h, u) = σ² / g(u)^ν · exp(−[‖h ⊘ ℓ‖² / g(u)^b]^γ),   g(u) = 1 + a·|u|^{2α},

and noise ``ε`` on context and test values. A batch shares locations, times, masks,
hyperparameters and mean; only the GP draw and the noise differ between its tasks. The
oracle conditions on the valid context with the true hyperparameters and mean.

Terrain ``T(s)`` (our choice where the protocol leaves it free): bumps at (−0.5, 0.4),
(0.45, −0.3), (0.1, 0.6) with widths (0.35, 0.25), (0.3, 0.4), (0.2, 0.2) and amplitudes
1.0, −0.8, 0.6, plus ``0.35·sin(πx + 0.35π)·cos(0.8πy − 0.175π)``, standardised over the
256 locations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Normal

from bsatnp.batch import Batch
from bsatnp.tasks.base import Task
from bsatnp.tasks.oracle import condition
from bsatnp.tasks.registry import register_task
from bsatnp.tasks.samplers import frame_context, time_window

BUMPS = (((-0.5, 0.4), (0.35, 0.25), 1.0), ((0.45, -0.3), (0.3, 0.4), -0.8),
         ((0.1, 0.6), (0.2, 0.2), 0.6))
"""Terrain bumps: (centre, widths, amplitude)."""
WEIGHT_RANGES = {"b0": 0.15, "w_ter": 0.75, "c1": 0.55, "c2": 0.55, "w_h": 0.25,
                 "w_int": 0.35, "w_tr": 0.10, "A": 0.55}
"""Mean weights, each uniform on ``±`` its value (one draw per batch)."""


def gneiting_covariance(s1: Tensor, t1: Tensor, s2: Tensor, t2: Tensor,
                        hyper: dict[str, Tensor]) -> Tensor:
    """``C((s1, t1), (s2, t2))`` ``[N, M]`` for points ``s [N, 2]``, ``t [N]`` (float64).

    ``hyper`` holds ``var``, ``ls [2]``, ``a``, ``alpha``, ``b``, ``nu``, ``gamma``.
    """
    h = (s1[:, None, :] - s2[None, :, :]) / hyper["ls"]
    u = (t1[:, None] - t2[None, :]).abs()
    g = 1.0 + hyper["a"] * u ** (2 * hyper["alpha"])
    scaled = h.square().sum(-1) / g ** hyper["b"]
    return hyper["var"] / g ** hyper["nu"] * torch.exp(-scaled ** hyper["gamma"])


def terrain(s: Tensor) -> Tensor:
    """Standardised terrain ``T(s)`` ``[N]`` of locations ``s [N, 2]`` (module doc)."""
    out = 0.35 * torch.sin(math.pi * s[:, 0] + 0.35 * math.pi) * torch.cos(
        0.8 * math.pi * s[:, 1] - 0.175 * math.pi)
    for centre, width, amplitude in BUMPS:
        z = (s - s.new_tensor(centre)) / s.new_tensor(width)
        out = out + amplitude * torch.exp(-0.5 * z.square().sum(-1))
    return (out - out.mean()) / out.std()


def gneiting_mean(s: Tensor, t: Tensor, ter: Tensor, w: dict[str, Tensor]) -> Tensor:
    """Mean ``m(s, t)`` ``[N]`` at locations ``s [N, 2]``, times ``t [N]``, terrain ``[N]``."""
    two_pi_t = 2 * math.pi * t
    centre = torch.stack([-0.55 + (t - 0.5) * 1.05, -0.25 + (t - 0.5) * 0.55], dim=-1)
    z = (s - centre) / s.new_tensor((0.24, 0.18))
    inner = (w["b0"] + w["w_ter"] * ter + w["c1"] * torch.sin(two_pi_t)
             + w["c2"] * torch.cos(two_pi_t) + w["w_h"] * torch.sin(2 * two_pi_t - 0.45 * math.pi)
             + w["w_int"] * ter * torch.sin(two_pi_t) + w["w_tr"] * (t - 0.5)
             + w["A"] * torch.exp(-0.5 * z.square().sum(-1)))
    return 6.0 + 0.9 * inner


@register_task
@dataclass(frozen=True)
class GneitingTask(Task):
    """Forecast the last frame of a space-time window (fields below; PROTOCOLS §6).

    Attributes:
        batch_size: Tasks per batch ``B`` (they share everything but the draw and noise).
        n_locations: Locations on ``[−1, 1]²``.
        n_times: Times ``linspace(0, 1, n_times)``.
        window: Frames per task; the last is the test frame.
        n_slots: Context slots per context frame.
        min_ctx: Fewest valid context points per frame.
        max_ctx: Most valid context points per frame.
        jitter: Added to the covariance diagonal.
    """

    name = "gneiting"
    has_oracle = True

    batch_size: int = 4
    n_locations: int = 256
    n_times: int = 12
    window: int = 5
    n_slots: int = 16
    min_ctx: int = 8
    max_ctx: int = 15
    jitter: float = 5e-4

    def __post_init__(self) -> None:
        if not 2 <= self.window <= self.n_times:
            raise ValueError(f"need 2 <= window <= n_times, got {self.window}, {self.n_times}")
        if not 1 <= self.min_ctx <= self.max_ctx <= self.n_slots <= self.n_locations:
            raise ValueError("need 1 <= min_ctx <= max_ctx <= n_slots <= n_locations")

    def model_defaults(self) -> dict[str, Any]:
        """2D locations, one time axis, scalar Gaussian values."""
        return {"dim_x": 0, "dim_s": 2, "dim_t": 1, "dim_f": 1, "likelihood": "gaussian"}

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch: context ``[B, (window − 1)·n_slots, ·]``, test ``[B, n_locations, ·]``."""
        return self.sample_with_oracle(generator, split)[0]

    def sample_with_oracle(self, generator: torch.Generator | None = None,
                           split: str = "test") -> tuple[Batch, Normal]:
        """The batch and the exact predictive of its (noisy) test values."""
        B, F, N = self.batch_size, self.window - 1, self.n_locations
        s = 2 * torch.rand(N, 2, generator=generator, dtype=torch.float64) - 1
        times = torch.linspace(0, 1, self.n_times, dtype=torch.float64)
        steps, _ = time_window(self.n_times, self.window, generator, target="last")
        index, mask = frame_context(1, F, N, self.n_slots, self.min_ctx, self.max_ctx, generator,
                                    shared=True)
        hyper = self._hyperparameters(generator)
        weights = {k: (2 * torch.rand((), generator=generator, dtype=torch.float64) - 1) * r
                   for k, r in WEIGHT_RANGES.items()}
        noise = 0.9 * _log_uniform(0.01, 0.06, generator)
        ter = terrain(s)
        # Points: the context slots of frames 1..F, then every location at the last frame.
        loc = torch.cat([index[0].reshape(-1), torch.arange(N)])  # [F·n_slots + N]
        frame = torch.cat([torch.arange(F).repeat_interleave(self.n_slots),
                           torch.full((N,), F)])
        t = times[steps[frame]]
        mean = gneiting_mean(s[loc], t, ter[loc], weights)
        valid = torch.cat([mask[0].reshape(-1), torch.ones(N, dtype=torch.bool)])
        keep = valid.nonzero().flatten()  # the joint draw covers valid context + test
        cov = gneiting_covariance(s[loc[keep]], t[keep], s[loc[keep]], t[keep], hyper)
        cov.diagonal().add_(self.jitter)
        chol = torch.linalg.cholesky(cov)
        draw = chol @ torch.randn(len(keep), B, generator=generator, dtype=torch.float64)
        values = torch.zeros(len(loc), B, dtype=torch.float64)
        values[keep] = draw
        values = values + mean[:, None] + noise * torch.randn(len(loc), B, generator=generator,
                                                              dtype=torch.float64)
        n_ctx = F * self.n_slots
        f = values.T[..., None].float()  # [B, L, 1]
        st = torch.cat([s[loc], t[:, None]], dim=-1).float()[None].expand(B, -1, -1)
        batch = Batch(s_ctx=st[:, :n_ctx, :2], t_ctx=st[:, :n_ctx, 2:], f_ctx=f[:, :n_ctx],
                      mask_ctx=mask[0].reshape(1, -1).expand(B, -1),
                      s_test=st[:, n_ctx:, :2], t_test=st[:, n_ctx:, 2:], f_test=f[:, n_ctx:])
        ctx = keep[keep < n_ctx]  # valid context points, in order
        k_all = gneiting_covariance(s[loc], t, s[loc], t, hyper)
        k_cc = k_all[ctx][:, ctx] + (self.jitter + noise**2) * torch.eye(len(ctx),
                                                                         dtype=torch.float64)
        prior_var = hyper["var"] + self.jitter + noise**2  # C(0, 0) + jitter + noise²
        residual = values[ctx] - mean[ctx, None]  # [k, B]
        test = torch.arange(n_ctx, len(loc))
        means, stds = [], []
        for b in range(B):
            m, sd = condition(k_cc, k_all[ctx][:, test], prior_var, residual[:, b:b + 1])
            means.append(m + mean[test, None])
            stds.append(sd)
        oracle = Normal(torch.stack(means).float(), torch.stack(stds).float())
        return batch, oracle

    def _hyperparameters(self, generator: torch.Generator | None) -> dict[str, Tensor]:
        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand((), generator=generator, dtype=torch.float64)

        return {
            "var": _log_uniform(0.85, 1.75, generator) * 0.81,
            "ls": torch.stack([_log_uniform(0.05, 0.15, generator) for _ in range(2)]),
            "a": _log_uniform(0.25, 2.5, generator),
            "alpha": uniform(0.35, 1.0),
            "b": uniform(0.0, 0.75),
            "nu": uniform(1.1, 4.0),
            "gamma": uniform(0.55, 1.0),
        }


def _log_uniform(lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    u = torch.rand((), generator=generator, dtype=torch.float64)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
