"""Healthy control: AdamW at lr=1e-3 (weight decay 0.01) on a ReLU MLP regressing a smooth target
with MSE.
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, mlp, regression, train


def run(seed: int, short: bool) -> RunResult:
    data = regression(seed)
    torch.manual_seed(seed)
    model = mlp(16, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="healthy_regression_adamw",
    expected=None,
    arch="mlp",
    optimizer="adamw",
    description=(
        "AdamW at lr=1e-3 (weight decay 0.01) on a ReLU MLP regressing a smooth target wi"
        "th MSE: trains well."
    ),
    run=run,
)
