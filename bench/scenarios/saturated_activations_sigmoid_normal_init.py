"""Saturated sigmoids: weights drawn from normal(0, 1) instead of Xavier."""

from __future__ import annotations

import torch

from scenarios._activations import init_normal_
from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    # nn.init.normal_(w) (std 1) on 512-wide sigmoid layers: hidden pre-activations have std
    # ~16, so most sit beyond ±5 where sigmoid' < 0.007.
    model = init_normal_(mlp(64, 512, 10, depth=3, activation=torch.nn.Sigmoid), 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="saturated_activations_sigmoid_normal_init",
    expected="saturated_activations",
    arch="mlp",
    optimizer="sgd",
    description="Sigmoid MLP with weights from normal(0, 1): most pre-activations lie beyond ±5, "
    "the sigmoids are flat there and pass almost no gradient.",
    run=run,
    quick=True,
)
