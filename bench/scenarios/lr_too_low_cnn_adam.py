"""LR far too low for Adam: a small CNN on 8x8 digits at lr=1e-6."""

from __future__ import annotations

import torch

from scenarios._common import Data, RunResult, Scenario, digits, train


def cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 2 * 2, 10),
    )


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    data = Data(data.x.reshape(-1, 1, 8, 8), data.y, data.x_val.reshape(-1, 1, 8, 8), data.y_val)
    torch.manual_seed(seed)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)  # a typo for 1e-3
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="lr_too_low_cnn_adam",
    expected="lr_too_low",
    arch="cnn",
    optimizer="adam",
    description="Adam at lr=1e-6 on a two-layer CNN: Adam moves each weight by ~1e-6 per step, "
    "an update/weight ratio near 1e-5.",
    run=run,
)
