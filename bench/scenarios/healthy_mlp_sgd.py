"""Healthy control: Plain SGD at lr=0.1 on a ReLU MLP over standardized digits."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="healthy_mlp_sgd",
    expected=None,
    arch="mlp",
    optimizer="sgd",
    description=("Plain SGD at lr=0.1 on a ReLU MLP over standardized digits: trains well."),
    run=run,
)
