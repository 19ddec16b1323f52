"""Batch of 1 with the LR of a batch-64 recipe: every step is mostly gradient noise."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, mlp, regression, train


def run(seed: int, short: bool) -> RunResult:
    data = regression(seed, n=4000, noise=0.5)
    torch.manual_seed(seed)
    model = mlp(16, 64, 1, activation=torch.nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    return train(model, opt, data, steps=1500 if short else 5000, batch_size=1, seed=seed)


SCENARIO = Scenario(
    name="batch_size_tiny_sgd",
    expected="batch_size",
    arch="mlp",
    optimizer="sgd",
    description="batch_size=1 (streaming one sample at a time) with SGD lr=0.02 from a batch-64 "
    "recipe on a noisy regression: the gradient noise holds the loss well above its floor.",
    run=run,
    quick=True,
)
