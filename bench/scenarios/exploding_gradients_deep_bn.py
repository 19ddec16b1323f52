"""Exploding gradients at depth: a 30-layer batch-normalised ReLU MLP (Yang et al. 2019)."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, train


def deep_bn_mlp(depth: int = 30, width: int = 64) -> torch.nn.Sequential:
    """Linear → BatchNorm → ReLU, ``depth`` times: batch norm keeps the forward pass tame while
    the backward pass grows geometrically towards the input (Yang et al. 2019, "A mean field
    theory of batch normalization")."""
    layers: list[torch.nn.Module] = []
    for i in range(depth):
        layers += [torch.nn.Linear(64 if i == 0 else width, width), torch.nn.BatchNorm1d(width)]
        layers.append(torch.nn.ReLU())
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = deep_bn_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train(model, opt, data, steps=400 if short else 1000, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="exploding_gradients_deep_bn",
    expected="exploding_gradients",
    arch="mlp",
    optimizer="sgd",
    description="30 Linear-BatchNorm-ReLU blocks without residual connections: the gradient "
    "reaching the first layer is hundreds of times the last layer's.",
    run=run,
    quick=True,
)
