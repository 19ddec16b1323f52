"""Healthy control: Adam at lr=1e-3 on a ReLU MLP over AUTOTRAINER's Circle data, standardized (no
×100).
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, circles, mlp, train
from scenarios._h5 import standardized


def run(seed: int, short: bool) -> RunResult:
    data = standardized(circles(seed))
    torch.manual_seed(seed)
    model = mlp(2, 32, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="healthy_circles_adam",
    expected=None,
    arch="mlp",
    optimizer="adam",
    description=(
        "Adam at lr=1e-3 on a ReLU MLP over AUTOTRAINER's Circle data, standardized (no ×"
        "100): trains well."
    ),
    run=run,
)
