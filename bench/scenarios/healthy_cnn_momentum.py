"""Healthy control: SGD with momentum 0.9 at lr=0.01 on a small CNN over standardized digits
images.
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, train
from scenarios._h5 import SmallCNN


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="healthy_cnn_momentum",
    expected=None,
    arch="cnn",
    optimizer="momentum",
    description=(
        "SGD with momentum 0.9 at lr=0.01 on a small CNN over standardized digits images:"
        " trains well."
    ),
    run=run,
    quick=True,
)
