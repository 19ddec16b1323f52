"""Capacity limit: logistic regression (a linear classifier) on make_circles."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, circles, train


def run(seed: int, short: bool) -> RunResult:
    data = circles(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)  # the fault: a linear decision boundary for concentric circles
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    return train(model, opt, data, steps=700 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="capacity_limit_circles_linear",
    expected="capacity_limit",
    arch="linear",
    optimizer="momentum",
    description="Logistic regression on make_circles: no line separates two concentric circles, "
    "so the loss stops near ln 2 ≈ 0.69 with healthy steps; a hidden layer would fit it.",
    run=run,
)
