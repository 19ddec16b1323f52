"""Healthy control: Adam at lr=1e-3 on a small CNN with BatchNorm over digits images."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, train
from scenarios._h5 import SmallCNN


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = SmallCNN(batch_norm=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="healthy_cnn_bn_adam",
    expected=None,
    arch="cnn",
    optimizer="adam",
    description=("Adam at lr=1e-3 on a small CNN with BatchNorm over digits images: trains well."),
    run=run,
)
