"""Vanishing gradients: a deep sigmoid MLP with default init (Glorot & Bengio 2010)."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    # Ten sigmoid layers: sigmoid' ≤ 0.25, so each layer shrinks the backward signal several
    # times over and the first layers get almost nothing (Glorot & Bengio 2010).
    model = mlp(64, 64, 10, depth=10, activation=torch.nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="vanishing_gradients_deep_sigmoid",
    expected="vanishing_gradients",
    arch="mlp",
    optimizer="momentum",
    description="Ten sigmoid layers with PyTorch's default init on digits: the gradient reaching "
    "the first layer is orders of magnitude below the last layer's and the loss stalls.",
    run=run,
)
