"""Flat region: squared error on softmax outputs (a classifier trained with MSE) under SGD."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train

F = torch.nn.functional


def softmax_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # the fault: squared error between class probabilities and one-hot labels (Golik et al.
    # 2013): the softmax Jacobian and the mean over classes leave a nearly flat surface
    return F.mse_loss(torch.softmax(out, dim=1), F.one_hot(y, 10).float())


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10, depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train(
        model,
        opt,
        data,
        steps=400 if short else 1500,
        batch_size=32,
        seed=seed,
        loss_fn=softmax_mse,
    )


SCENARIO = Scenario(
    name="flat_region_softmax_mse",
    expected="flat_region",
    arch="mlp",
    optimizer="sgd",
    description="MSE between softmax probabilities and one-hot digits labels with SGD lr=0.1: "
    "gradient and curvature are both tiny, so steps barely move the loss.",
    run=run,
)
