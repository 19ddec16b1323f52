"""AdamW at lr=0.05 (an SGD learning rate) on a ReLU MLP: steps far too large."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="lr_too_high_adamw",
    expected="lr_too_high",
    arch="mlp",
    optimizer="adamw",
    description="AdamW with lr=0.05 (50x its usual 1e-3): every coordinate moves by ~0.05 per "
    "step, the loss bounces well above where Adam at 1e-3 gets.",
    run=run,
)
