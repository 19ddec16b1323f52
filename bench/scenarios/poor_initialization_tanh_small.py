"""Poor initialization: a 10-layer tanh MLP with weights 0.01 * randn (CS231n's example)."""

from __future__ import annotations

import torch

from scenarios._activations import init_normal_
from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    # W = 0.01 * randn in a 10-layer tanh net (CS231n "Neural Networks 2"): each layer shrinks
    # the signal ~10×, the last hidden layer's output is ~1e-9 of the first's and the gradients
    # vanish along the same path.
    model = init_normal_(mlp(64, 128, 10, depth=10, activation=torch.nn.Tanh), 0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="poor_initialization_tanh_small",
    expected="poor_initialization",
    arch="mlp",
    optimizer="momentum",
    description="Ten tanh layers with weights 0.01·randn: the activation scale collapses ~10× "
    "per layer, the output carries no signal and the loss sits at log(10).",
    run=run,
)
