"""Overfitting: a wide MLP fits the noise of 100 regression samples; validation climbs."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, mlp, regression, train


def run(seed: int, short: bool) -> RunResult:
    data = regression(seed, n=1000, noise=1.0)
    data.x, data.y = data.x[:100], data.y[:100]  # the fault: 100 noisy training samples ...
    torch.manual_seed(seed)
    model = mlp(16, 256, 1)  # ... for a 70k-parameter model, without any regularization
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    return train(model, opt, data, steps=450 if short else 600, batch_size=10, seed=seed)


SCENARIO = Scenario(
    name="overfitting_noisy_regression",
    expected="overfitting",
    arch="mlp",
    optimizer="adam",
    description="A 256-wide MLP trained with Adam on 100 samples of a regression task with "
    "noise 1.0: the training loss falls far below the noise floor 1.0 while the "
    "validation loss turns and climbs.",
    run=run,
    quick=True,
)
