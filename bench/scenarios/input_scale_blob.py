"""Unnormalized inputs: AUTOTRAINER's Blob data with inputs ×100."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, blobs, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = blobs(seed, scale=100)
    torch.manual_seed(seed)
    model = mlp(2, 32, 3, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="input_scale_blob",
    expected="input_scale",
    arch="mlp",
    optimizer="adam",
    description="AUTOTRAINER's Blob problem with inputs ×100 (features in the hundreds): the "
    "ReLU MLP's first layer is swamped and the loss stalls above what normalized inputs reach.",
    run=run,
)
