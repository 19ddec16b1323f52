"""Converged: a student that can express its teacher, trained to the noise floor and on past it."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, mlp, regression, train


def run(seed: int, short: bool) -> RunResult:
    data = regression(seed, n=10000, noise=0.1)  # floor: noise² = 0.01; enough data not to memorize
    torch.manual_seed(seed)
    model = mlp(16, 32, 1, depth=1, activation=torch.nn.Tanh)  # the teacher is a tanh layer
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 800 if short else 2500
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    # the "fault": a fixed step budget far beyond what the task needs
    return train(model, opt, data, steps=steps, batch_size=64, seed=seed, scheduler=sched)


SCENARIO = Scenario(
    name="converged_regression_long",
    expected="converged",
    arch="mlp",
    optimizer="adam",
    description="A tanh MLP that can express its tanh teacher, on a regression with noise 0.1 "
    "under a cosine schedule: the loss falls ~100x to the noise floor, and the remaining steps "
    "only average noise.",
    run=run,
    quick=True,
)
