"""Stochastic SIR epidemics on a lattice (PROTOCOLS §5) and the task of classifying them.

Each cell is susceptible, infected or recovered. One transition, computed from the previous
state only (a cell infected in a step cannot recover in it):

* infection pressure ``ν = I ⋆ K``: the infected indicator convolved ("same" size, zero
  padding) with a 9×9 kernel of weights ``1 / (i² + j²)`` and 0 at the centre;
* a susceptible cell becomes infected with probability ``β·ν`` (not clipped: above 1 means
  certain infection);
* an infected cell recovers with probability ``γ``.

Simulations are vectorised over a leading batch axis, and all randomness comes from one
``torch.Generator``, so a seed reproduces a set of epidemics exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bsatnp.batch import Batch
from bsatnp.tasks.base import IN_DOMAIN, Task
from bsatnp.tasks.gp import check_box
from bsatnp.tasks.priors import Beta, InvGamma, Prior
from bsatnp.tasks.registry import register_task
from bsatnp.tasks.samplers import context_test_indices

SUSCEPTIBLE, INFECTED, RECOVERED = 0, 1, 2
"""Cell states as stored in simulated frames (``int8``)."""
KERNEL_RADIUS = 4
"""The pressure kernel is ``(2·4 + 1)²`` = 9×9."""


def pressure_kernel(radius: int = KERNEL_RADIUS) -> Tensor:
    """The infection-pressure kernel ``[2r+1, 2r+1]``: ``1 / (i² + j²)``, 0 at the centre."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    d2 = offsets[:, None].square() + offsets[None, :].square()
    return torch.where(d2 > 0, 1.0 / d2.clamp_min(1.0), torch.zeros(()))


@dataclass(frozen=True)
class SIRSimulator:
    """Draws epidemics: parameters from their priors, 1–4 infected cells, then transitions.

    Attributes:
        height: Lattice rows ``H``.
        width: Lattice columns ``W``.
        n_frames: Frames per epidemic, the initial state included (transitions + 1).
        beta_prior: Prior of the infection rate ``β`` (per epidemic).
        gamma_prior: Prior of the recovery probability ``γ`` (per epidemic).
        min_infected: Fewest initially infected cells.
        max_infected: Most initially infected cells.
    """

    height: int = 64
    width: int = 64
    n_frames: int = 25
    beta_prior: Prior = field(default_factory=lambda: Beta(2.0, 8.0))
    gamma_prior: Prior = field(default_factory=lambda: InvGamma(5.0, 0.4))
    min_infected: int = 1
    max_infected: int = 4

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.n_frames) < 1:
            raise ValueError(f"height, width and n_frames must be >= 1, got {self.height}, "
                             f"{self.width}, {self.n_frames}")
        if not 1 <= self.min_infected <= self.max_infected <= self.height * self.width:
            raise ValueError("need 1 <= min_infected <= max_infected <= height·width, got "
                             f"{self.min_infected}, {self.max_infected}")

    def simulate(self, n: int, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """Simulate ``n`` independent epidemics.

        Returns:
            ``(frames [n, F, H, W] int8, beta [n], gamma [n])`` (rates as float64).
        """
        beta = self.beta_prior.sample(n, generator)
        gamma = self.gamma_prior.sample(n, generator)
        state = self.initial_state(n, generator)
        return run_sir(state, beta, gamma, self.n_frames, generator), beta, gamma

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Initial states ``[n, H, W]`` (int8): all susceptible but a few infected cells.

        Each epidemic has ``k ~ U{min_infected, …, max_infected}`` distinct infected cells.
        """
        cells = self.height * self.width
        k = torch.randint(self.min_infected, self.max_infected + 1, (n, 1), generator=generator)
        order = torch.rand(n, cells, generator=generator).argsort(dim=1)
        ranks = order.argsort(dim=1)  # rank of every cell in a random order
        infected = ranks < k
        state = torch.full((n, cells), SUSCEPTIBLE, dtype=torch.int8)
        state[infected] = INFECTED
        return state.reshape(n, self.height, self.width)


def run_sir(state: Tensor, beta: Tensor, gamma: Tensor, n_frames: int,
            generator: torch.Generator | None = None) -> Tensor:
    """Run ``n_frames − 1`` transitions from ``state``.

    Args:
        state: Initial states ``[n, H, W]`` (int8: 0 S, 1 I, 2 R).
        beta: Infection rate per epidemic ``[n]``.
        gamma: Recovery probability per epidemic ``[n]``.
        n_frames: Frames to return, the initial one included.
        generator: Source of randomness.

    Returns:
        ``[n, n_frames, H, W]`` int8.
    """
    n = state.shape[0]
    kernel = pressure_kernel().to(state.device)[None, None]
    beta = torch.as_tensor(beta, dtype=torch.float32).reshape(n, 1, 1)
    gamma = torch.as_tensor(gamma, dtype=torch.float32).reshape(n, 1, 1)
    frames = [state]
    for _ in range(n_frames - 1):
        infected = state == INFECTED
        pressure = F.conv2d(infected[:, None].float(), kernel, padding=KERNEL_RADIUS)[:, 0]
        u = torch.rand(2, *state.shape, generator=generator, device=state.device)
        catch = (state == SUSCEPTIBLE) & (u[0] < beta * pressure)
        recover = infected & (u[1] < gamma)
        state = state.clone()
        state[catch] = INFECTED
        state[recover] = RECOVERED
        frames.append(state)
    return torch.stack(frames, dim=1)


CLASS_ORDER = (INFECTED, RECOVERED, SUSCEPTIBLE)
"""Class ``c`` of the one-hot values is state ``CLASS_ORDER[c]`` (the reference's order)."""


@register_task
@dataclass(frozen=True)
class SIRTask(Task):
    """Classify epidemic states on a lattice from a few observed cells (PROTOCOLS §5).

    Per batch: one epidemic simulated on a ``side × side`` grid of locations
    ``linspace(lo, hi, side)²``; ``batch_size`` frames drawn from it with replacement; one
    permutation of the cells shared by the batch. The first ``n_ctx`` permuted cells are
    context slots with ``k ~ U{min_ctx, …, max_ctx}`` valid per task; the test set is the
    first ``n_test`` permuted cells, which contain every context slot. Values are one-hot
    over (infected, recovered, susceptible); no noise, no time input.

    Attributes:
        batch_size: Frames per batch ``B``.
        side: Lattice cells per side.
        box: ``(lo, hi)`` of the square the lattice spans.
        n_frames: Frames per simulated epidemic.
        n_ctx: Context slots ``Lc``.
        min_ctx: Fewest valid context cells per task.
        max_ctx: Most valid context cells per task.
        n_test: Test cells ``Lt`` (at least ``n_ctx``: the context slots come first).
        scaled_side: Lattice side of the scaled domain (the paper's 128 on ``[−4, 4]²``:
            the box doubles, the cell spacing stays about the same).
        scaled_frames: Frames per epidemic in the scaled domain.
        scaled_min_ctx: Fewest valid context cells in the scaled domain.
    """

    name = "sir"
    likelihood = "categorical"
    has_field = True
    class_names = ("infected", "recovered", "susceptible")
    domains = (IN_DOMAIN, "shifted", "scaled")

    batch_size: int = 8
    side: int = 64
    box: tuple[float, float] = (-2.0, 2.0)
    n_frames: int = 25
    n_ctx: int = 512
    min_ctx: int = 128
    max_ctx: int = 511
    n_test: int = 1024
    scaled_side: int = 128
    scaled_frames: int = 50
    scaled_min_ctx: int = 512

    def __post_init__(self) -> None:
        if not 1 <= self.min_ctx <= self.max_ctx <= self.n_ctx <= self.n_test <= self.side**2:
            raise ValueError("need 1 <= min_ctx <= max_ctx <= n_ctx <= n_test <= side², got "
                             f"{self.min_ctx}, {self.max_ctx}, {self.n_ctx}, {self.n_test}, "
                             f"{self.side}²")
        check_box(self.box)

    def model_defaults(self) -> dict[str, Any]:
        """2D locations; three classes."""
        return {"dim_x": 0, "dim_s": 2, "dim_t": 0, "dim_f": len(CLASS_ORDER),
                "likelihood": "categorical"}

    def domain(self, name: str) -> Task:
        """``in_domain``, ``shifted`` (box + 10) or ``scaled``.

        ``scaled`` doubles the box about its centre on a ``scaled_side`` lattice with 4× the
        context slots and test cells.
        """
        lo, hi = self.box
        if name == "shifted":
            return replace(self, box=(lo + 10.0, hi + 10.0))
        if name == "scaled":
            centre, half = (lo + hi) / 2, (hi - lo) / 2
            return replace(self, box=(centre - 2 * half, centre + 2 * half),
                           side=self.scaled_side, n_frames=self.scaled_frames,
                           n_ctx=4 * self.n_ctx, n_test=4 * self.n_test,
                           min_ctx=self.scaled_min_ctx, max_ctx=4 * (self.max_ctx + 1) - 1)
        return super().domain(name)

    def field_batch(self, n_ctx: int, grid_size: int,
                    generator: torch.Generator | None = None) -> tuple[Batch, str]:
        """One frame for a figure: ``n_ctx`` random observed cells, every cell as a test point.

        ``grid_size`` is unused: the test grid is the lattice (row-major, row = second
        coordinate).

        Returns:
            ``(batch, caption)`` with ``B = 1`` and the frame's ``β``, ``γ`` and time.

        Raises:
            ValueError: If ``n_ctx`` is not in ``[1, side²]``.
        """
        if not 1 <= n_ctx <= self.side**2:
            raise ValueError(f"need 1 <= n_ctx <= {self.side**2}, got {n_ctx}")
        sim = SIRSimulator(height=self.side, width=self.side, n_frames=self.n_frames)
        frames, beta, gamma = sim.simulate(1, generator)
        time = int(torch.randint(0, self.n_frames, (1,), generator=generator))
        s, f = self.cells_and_classes(frames[0, time][None])
        ctx = torch.randperm(self.side**2, generator=generator)[:n_ctx]
        batch = Batch(s_ctx=s[:, ctx], f_ctx=f[:, ctx], s_test=s, f_test=f)
        return batch, f"frame {time}, β {float(beta):.2f}, γ {float(gamma):.2f}"

    def cells_and_classes(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Cell centres ``[B, H·W, 2]`` and one-hot classes ``[B, H·W, 3]`` of frames.

        Args:
            frames: States ``[B, H, W]`` (int8).
        """
        axis = torch.linspace(*self.box, self.side)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        cells = torch.stack([cols.flatten(), rows.flatten()], dim=-1)  # [H·W, 2]
        classes = torch.tensor([CLASS_ORDER.index(s) for s in range(3)])[frames.flatten(1).long()]
        onehot = F.one_hot(classes, len(CLASS_ORDER)).float()
        return cells.expand(len(frames), -1, -1), onehot

    def sample(self, generator: torch.Generator | None = None, split: str = "train") -> Batch:
        """One batch: ``s [B, L, 2]`` cell centres and one-hot ``f [B, L, 3]``."""
        B, Lc = self.batch_size, self.n_ctx
        sim = SIRSimulator(height=self.side, width=self.side, n_frames=self.n_frames)
        frames = sim.simulate(1, generator)[0][0]  # [F, H, W]
        picked = frames[torch.randint(0, self.n_frames, (B,), generator=generator)]
        ctx, mask_ctx, test = context_test_indices(
            B, self.side**2, Lc, self.n_test, self.min_ctx, self.max_ctx, generator,
            shared_permutation=True, test_includes_context=True)
        s_all, onehot = self.cells_and_classes(picked)

        def take(values: Tensor, index: Tensor) -> Tensor:
            return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))

        return Batch(s_ctx=take(s_all, ctx), f_ctx=take(onehot, ctx), mask_ctx=mask_ctx,
                     s_test=take(s_all, test), f_test=take(onehot, test))
