"""Healthy control: Adam at lr=1e-3 on a ReLU MLP over digits, handing per-sample losses with ids
and targets from a clean shuffled loader.
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(
        model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed, per_sample=True
    )


SCENARIO = Scenario(
    name="healthy_per_sample_adam",
    expected=None,
    arch="mlp",
    optimizer="adam",
    description=(
        "Adam at lr=1e-3 on a ReLU MLP over digits, handing per-sample losses with ids an"
        "d targets from a clean shuffled loader: trains well."
    ),
    run=run,
)
