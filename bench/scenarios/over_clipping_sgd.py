"""Gradient clipping on every step: clip_grad_norm_ with max_norm=0.01 under plain SGD."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # max_norm copied from a recipe that clipped per-parameter values, 50x below the typical norm
    return train(
        model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed, clip=0.01
    )


SCENARIO = Scenario(
    name="over_clipping_sgd",
    expected="over_clipping",
    arch="mlp",
    optimizer="sgd",
    description="SGD lr=0.05 with clip_grad_norm_(max_norm=0.01): every step is cut to length "
    "5e-4 whatever the gradient, ~50x shorter than the unclipped step.",
    run=run,
    quick=True,
)
