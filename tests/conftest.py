"""Shared fixtures: tiny models and data that make tests fast on 2 CPU cores."""

from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch

from unstuck.rescue import Policy, Proposal

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_quiet() -> None:
    torch.manual_seed(0)
    logging.getLogger("unstuck").setLevel(logging.INFO)


def tiny_mlp(n_in: int = 4, hidden: int = 8, n_out: int = 3) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )


def regression_batch(n: int = 16, n_in: int = 4, n_out: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g), torch.randn(n, n_out, generator=g)


def guarded_run_with_every_tap(steps: int = 30):
    """A closed Guard over a tiny MLP run with every sampled signal taken at every step and
    every input a tap reads (per-sample losses with ids and targets, a clipped norm, a loss
    component, validation losses): the run that shows every series the taps can produce."""
    from unstuck import Guard

    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    every = dict.fromkeys(
        (
            "grad_norm_every",
            "update_ratio_every",
            "distance_every",
            "grad_noise_every",
            "activation_every",
            "optimizer_state_every",
            "precision_every",
        ),
        1,
    )
    guard = Guard(model, optimizer, console=False, flush_every=5, dataset_size=64, **every)
    for step in range(steps):
        x, y = regression_batch(seed=step)
        per_sample = torch.nn.functional.mse_loss(model(x), y, reduction="none").mean(dim=1)
        optimizer.zero_grad()
        per_sample.mean().backward()
        guard.clip_grad_norm_(1.0)
        optimizer.step()
        ids = torch.arange(16) + 16 * (step % 4)
        guard.step(per_sample, ids=ids, targets=ids % 3, components={"mse": 1.0})
        if step % 10 == 9:
            guard.validate(float(per_sample.detach().mean()))
    guard.close()
    return guard


def require(module: str, extra: str) -> None:
    """Skip when an optional framework is missing, except in CI, where it is a failure."""
    if importlib.util.find_spec(module) is not None:
        return
    message = f"{module} is not installed (pip install 'unstuck[{extra}]')"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it")
    pytest.skip(message)


class ProposeInOrder(Policy):
    """Proposes the given proposals in order, whatever the state (for driving the engine)."""

    name = "test"

    def __init__(self, *proposals: Proposal) -> None:
        self.proposals = list(proposals)

    def propose(self, *, step, state, findings, tried, plateau_kind=None, plateau_start=None):
        for p in self.proposals:
            if p.key not in tried:
                return p
        return None
