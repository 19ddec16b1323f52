"""Unnormalized inputs: AUTOTRAINER's Circle data with inputs ×100."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, circles, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = circles(seed, scale=100)
    torch.manual_seed(seed)
    model = mlp(2, 32, 2, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="input_scale_circle",
    expected="input_scale",
    arch="mlp",
    optimizer="sgd",
    description="AUTOTRAINER's Circle problem with inputs ×100 (coordinates in ±100): the first "
    "layer's effective step is 10^4 times too large and the ReLU MLP cannot fit the circles.",
    run=run,
    quick=True,
)
