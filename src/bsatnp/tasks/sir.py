"""Stochastic SIR epidemics on a lattice (PROTOCOLS §5), simulated in torch.

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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from bsatnp.tasks.priors import Beta, InvGamma, Prior

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
