"""Healthy control: Adam at lr=3e-3 on a one-layer GRU over token sequences."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, sequences, train
from scenarios._h5 import GRUClassifier


def run(seed: int, short: bool) -> RunResult:
    data = sequences(seed, n=8000)
    torch.manual_seed(seed)
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=64, seed=seed)


SCENARIO = Scenario(
    name="healthy_gru_adam",
    expected=None,
    arch="rnn",
    optimizer="adam",
    description=("Adam at lr=3e-3 on a one-layer GRU over 8,000 token sequences: trains well."),
    run=run,
    quick=True,
)
