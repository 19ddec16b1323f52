"""AdamW at lr=1e-2 with no warm-up on a post-norm 2-layer Transformer: the first full-size steps
collapse it to predicting the class prior."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, sequences, train
from scenarios._data import TransformerNet


def run(seed: int, short: bool) -> RunResult:
    data = sequences(seed, n=4000, length=6)
    torch.manual_seed(seed)
    model = TransformerNet(length=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return train(model, opt, data, steps=300 if short else 800, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="missing_warmup_transformer_adamw",
    expected="missing_warmup",
    arch="transformer",
    optimizer="adamw",
    description=(
        "AdamW at lr=1e-2 from step 0 (no warm-up) on a post-LayerNorm 2-layer Transformer"
        "Encoder over 4,000 length-6 token sequences: the first steps, ~1e-2 per weight, "
        "collapse it to the class prior and the loss sits at ln 10 (Xiong et al. 2020)."
    ),
    run=run,
    quick=True,
)
