"""The classifier head replaced after the optimizer was built: the new head never trains."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 5)  # built for a 5-class task ...
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # ... then re-headed for 10 classes after the optimizer already holds the old head: the new
    # layer has requires_grad=True but is in no param group and keeps its random weights.
    model[-1] = torch.nn.Linear(64, 10)
    return train(model, opt, data, steps=300 if short else 1200, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="frozen_parameters_replaced_head",
    expected="frozen_parameters",
    arch="mlp",
    optimizer="momentum",
    description="The last layer is replaced after SGD was built from model.parameters(): the "
    "new head is in no param group and keeps its random weights for the whole run.",
    run=run,
)
