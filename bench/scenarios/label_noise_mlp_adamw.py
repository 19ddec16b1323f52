"""Label noise: a fifth of the digits' training labels replaced by a random other class."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train
from scenarios._data import flip_labels


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    flip_labels(data, 0.2, seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return train(
        model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed, per_sample=True
    )


SCENARIO = Scenario(
    name="label_noise_mlp_adamw",
    expected="label_noise",
    arch="mlp",
    optimizer="adamw",
    description="20 % of the training labels are a random wrong class (a broken annotation "
    "export): the MLP learns the digits and those samples stay confidently wrong.",
    run=run,
    quick=True,
)
