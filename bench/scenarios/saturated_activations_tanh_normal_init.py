"""Saturated tanh units: a 5-layer tanh MLP with weights from normal(0, 1) instead of Xavier."""

from __future__ import annotations

import torch

from scenarios._activations import init_normal_
from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    # normal_(w) (std 1) on 128-wide tanh layers: hidden pre-activations have std ~10, so most
    # tanh units sit at ±1 where tanh' < 2e-4 and the gradient dies on its way down five layers.
    model = init_normal_(mlp(64, 128, 10, depth=5, activation=torch.nn.Tanh), 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="saturated_activations_tanh_normal_init",
    expected="saturated_activations",
    arch="mlp",
    optimizer="momentum",
    description="Five tanh layers with weights from normal(0, 1): hidden pre-activations have std "
    "~10, most units sit at ±1 with a derivative below 2e-4 and the loss stalls far above 0.",
    run=run,
)
