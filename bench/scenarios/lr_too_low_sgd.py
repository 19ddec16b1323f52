"""LR two decades too low: a ReLU MLP on digits with plain SGD at lr=1e-4."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="lr_too_low_sgd",
    expected="lr_too_low",
    arch="mlp",
    optimizer="sgd",
    description="SGD at lr=1e-4 on a ReLU MLP: each step moves the weights ~1e-5 of their size.",
    run=run,
    quick=True,
)
