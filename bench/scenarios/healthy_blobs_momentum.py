"""Healthy control: SGD with momentum 0.9 at lr=0.01 on a ReLU MLP over AUTOTRAINER's Blob data,
standardized (no ×100).
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, blobs, mlp, train
from scenarios._h5 import standardized


def run(seed: int, short: bool) -> RunResult:
    data = standardized(blobs(seed))
    torch.manual_seed(seed)
    model = mlp(2, 32, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="healthy_blobs_momentum",
    expected=None,
    arch="mlp",
    optimizer="momentum",
    description=(
        "SGD with momentum 0.9 at lr=0.01 on a ReLU MLP over AUTOTRAINER's Blob data, sta"
        "ndardized (no ×100): trains to its overlap floor."
    ),
    run=run,
)
