"""Healthy control: SGD with momentum 0.9 at lr=0.05 decayed to zero by a cosine schedule on a ReLU
MLP over digits, validated every 50 steps.
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train
from scenarios._h5 import cosine


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 128, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = 400 if short else 1500
    sched = cosine(opt, steps)
    return train(
        model, opt, data, steps=steps, batch_size=32, seed=seed, scheduler=sched, val_every=50
    )


SCENARIO = Scenario(
    name="healthy_cosine_val",
    expected=None,
    arch="mlp",
    optimizer="momentum",
    description=(
        "SGD with momentum 0.9 at lr=0.05 decayed to zero by a cosine schedule on a ReLU "
        "MLP over digits, validated every 50 steps: trains well."
    ),
    run=run,
)
