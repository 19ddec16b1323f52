"""Repeated data: `next(iter(loader))` in the loop with shuffle=False: the first batch again."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, sequences, train
from scenarios._data import GRUNet


def run(seed: int, short: bool) -> RunResult:
    data = sequences(seed)
    batch = 64
    first = torch.arange(batch)  # DataLoader(shuffle=False): a fresh iterator starts at index 0

    def indices(step: int, gen: torch.Generator) -> torch.Tensor:
        return first

    torch.manual_seed(seed)
    model = GRUNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(
        model,
        opt,
        data,
        steps=300 if short else 1000,
        batch_size=batch,
        seed=seed,
        per_sample=True,
        indices=indices,
    )


SCENARIO = Scenario(
    name="repeated_data_gru_adam",
    expected="repeated_data",
    arch="rnn",
    optimizer="adam",
    description="`x, y = next(iter(loader))` inside the loop with shuffle=False: the GRU sees the "
    "same 64 sequences every step and memorises them.",
    run=run,
    quick=True,
)
