"""LR decayed too early: momentum SGD at lr=0.05 on a ReLU MLP over digits, cut ×1000 by a step
schedule at step 15, long before the loss converged."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[15], gamma=1e-3)
    return train(
        model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed, scheduler=sched
    )


SCENARIO = Scenario(
    name="lr_decayed_early_sgd",
    expected="lr_decayed_early",
    arch="mlp",
    optimizer="momentum",
    description=(
        "Momentum SGD at lr=0.05 cut ×1000 at step 15 by a step schedule: the loss falls, then "
        "freezes with its gradient still well above noise."
    ),
    run=run,
)
