"""Class imbalance: three digit classes kept at 4 % of their samples (a long-tail subsample)."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train
from scenarios._data import subsample_classes


def run(seed: int, short: bool) -> RunResult:
    data = subsample_classes(digits(seed), [7, 8, 9], 0.04, seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train(
        model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed, per_sample=True
    )


SCENARIO = Scenario(
    name="class_imbalance_mlp_sgd",
    expected="class_imbalance",
    arch="mlp",
    optimizer="sgd",
    description="Digits 7, 8 and 9 keep 4 % of their samples (~25x rarer than the rest): plain "
    "SGD fits the frequent classes and the rare ones stay unlearned.",
    run=run,
)
