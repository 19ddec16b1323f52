"""AdamW's weight_decay=0.1 passed to Adam, where it is an L2 term inside the adaptive step."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.1)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="over_regularization_adam_l2",
    expected="over_regularization",
    arch="mlp",
    optimizer="adam",
    description="Adam(weight_decay=0.1), a decay meant for AdamW: the L2 pull equals the data "
    "gradient, the weights shrink below their init and the loss settles ~100x above a healthy run.",
    run=run,
)
