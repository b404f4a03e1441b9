"""The SIR lattice simulator (PROTOCOLS §5): kernel, transitions, reproducibility."""

from __future__ import annotations

import pytest
import torch

from bsatnp.tasks.priors import Fixed
from bsatnp.tasks.sir import (
    INFECTED,
    RECOVERED,
    SUSCEPTIBLE,
    SIRSimulator,
    pressure_kernel,
    run_sir,
)


def test_pressure_kernel_closed_form():
    k = pressure_kernel()
    assert k.shape == (9, 9) and k[4, 4] == 0
    assert k[4, 5] == 1.0 and k[3, 3] == 0.5 and k[0, 0] == pytest.approx(1 / 32)
    assert k[4, 0] == pytest.approx(1 / 16) and torch.equal(k, k.T) and torch.equal(k, k.flip(0))


def test_initial_state_has_one_to_four_infected_cells():
    sim = SIRSimulator(height=16, width=12)
    state = sim.initial_state(500, torch.Generator().manual_seed(0))
    counts = (state == INFECTED).flatten(1).sum(1)
    assert state.shape == (500, 16, 12) and state.dtype == torch.int8
    assert counts.min() == 1 and counts.max() == 4
    assert ((state == SUSCEPTIBLE) | (state == INFECTED)).all()


def test_states_only_move_forward_and_runs_are_reproducible():
    sim = SIRSimulator(height=32, width=32, n_frames=25)
    frames, beta, gamma = sim.simulate(6, torch.Generator().manual_seed(3))
    again, _, _ = sim.simulate(6, torch.Generator().manual_seed(3))
    assert frames.shape == (6, 25, 32, 32) and torch.equal(frames, again)
    assert (frames[:, 1:] >= frames[:, :-1]).all()  # S → I → R only (0 → 1 → 2)
    assert ((0 < beta) & (beta < 1)).all() and (gamma > 0).all()
    assert (frames[:, -1] != SUSCEPTIBLE).sum() > (frames[:, 0] != SUSCEPTIBLE).sum()


def test_certain_infection_reaches_exactly_the_kernel_neighbourhood():
    state = torch.zeros(1, 15, 15, dtype=torch.int8)
    state[0, 7, 7] = INFECTED
    frames = run_sir(state, torch.tensor([100.0]), torch.tensor([0.0]), 3)
    step1 = frames[0, 1]
    expect = torch.zeros(15, 15, dtype=torch.bool)
    expect[3:12, 3:12] = True  # within the 9×9 kernel: pressure ≥ 1/32, β·ν ≥ 3
    assert torch.equal(step1 == INFECTED, expect)
    assert (frames[0, 2] == INFECTED).all()  # one more step covers the 15×15 lattice


def test_no_infection_without_rate_and_recovery_from_the_previous_state():
    sim = SIRSimulator(height=10, width=10, n_frames=2, beta_prior=Fixed(0.0),
                       gamma_prior=Fixed(1.0))
    frames, _, _ = sim.simulate(4, torch.Generator().manual_seed(1))
    assert torch.equal(frames[:, 1] == RECOVERED, frames[:, 0] == INFECTED)
    assert not (frames[:, 1] == INFECTED).any()
    far = torch.zeros(1, 20, 20, dtype=torch.int8)
    far[0, 0, 0] = INFECTED  # cells more than 4 away feel no pressure
    out = run_sir(far, torch.tensor([100.0]), torch.tensor([0.0]), 2)
    assert (out[0, 1, 5:, :] == SUSCEPTIBLE).all() and (out[0, 1, :, 5:] == SUSCEPTIBLE).all()
