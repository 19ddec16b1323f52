"""Stale Adam state: a run resumed with its optimizer state after the loss changed scale."""

from __future__ import annotations

import torch
from torch.nn import functional

from scenarios._common import RunResult, Scenario, digits, mlp, train


def _pretrain(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int, steps: int) -> None:
    """The first job: cross-entropy summed over the batch (reduction='sum'), as the old code."""
    data = digits(seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(steps):
        idx = torch.randint(0, data.x.shape[0], (32,), generator=gen)
        loss = functional.cross_entropy(model(data.x[idx]), data.y[idx], reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _pretrain(model, opt, seed, steps=100)
    checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    # The resumed job: same checkpoint, but the loss is now the batch mean (cross_entropy's
    # default), 32x smaller; Adam's second moment still holds the summed loss's gradients.
    model = mlp(64, 64, 10)
    model.load_state_dict(checkpoint["model"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(checkpoint["optimizer"])
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="stale_optimizer_state_resume",
    expected="stale_optimizer_state",
    arch="mlp",
    optimizer="adam",
    description="Adam resumed with its saved state after the loss went from reduction='sum' to "
    "the batch mean: v̂ is ~1000x the new squared gradients, so every step is ~30x too small.",
    run=run,
    quick=True,
)
