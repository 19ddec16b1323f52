"""Healthy control: AdamW at lr=2e-3 (weight decay 0.01, 100 warm-up steps) on a 2-layer
TransformerEncoder over token sequences.
"""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, sequences, train
from scenarios._h5 import TinyTransformer, warmup


def run(seed: int, short: bool) -> RunResult:
    data = sequences(seed, n=8000, length=6)
    torch.manual_seed(seed)
    model = TinyTransformer(length=6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = warmup(opt, 100)
    return train(
        model, opt, data, steps=300 if short else 800, batch_size=64, seed=seed, scheduler=sched
    )


SCENARIO = Scenario(
    name="healthy_transformer_adamw",
    expected=None,
    arch="transformer",
    optimizer="adamw",
    description=(
        "AdamW at lr=2e-3 (weight decay 0.01, 100 warm-up steps) on a 2-layer Transformer"
        "Encoder over 8,000 length-6 token sequences: trains well."
    ),
    run=run,
    quick=True,
)
