"""Dead ReLUs from initialisation: hidden biases filled with a negative constant."""

from __future__ import annotations

import torch

from scenarios._activations import fill_hidden_bias_
from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    # bias.fill_(-1.0) where 0.01 (or 0) was meant: with default-init weights the hidden
    # pre-activations have std ~0.6, so nearly every unit starts below zero for every sample.
    model = fill_hidden_bias_(mlp(64, 64, 10, depth=3), -1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="dead_relu_negative_bias",
    expected="dead_relu",
    arch="mlp",
    optimizer="momentum",
    description="Hidden ReLU biases initialised to -1 instead of a small positive value: most "
    "units never fire, so no gradient reaches them and the loss stalls.",
    run=run,
    quick=True,
)
