"""Truncated data: a DistributedSampler(num_replicas=4, rank=0) left in a single-process run."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, sequences, train
from scenarios._data import TransformerNet


def run(seed: int, short: bool) -> RunResult:
    data = sequences(seed)
    n, batch = data.x.shape[0], 64
    # DistributedSampler(shuffle=True, seed=0) without set_epoch(): the same permutation every
    # epoch, and rank 0 of 4 replicas takes every 4th index of it, so a fixed quarter is all the
    # loop ever sees (a config copied from a 4-GPU job).
    shard = torch.randperm(n, generator=torch.Generator().manual_seed(0))[0::4]
    per_epoch = shard.numel() // batch  # drop_last=True

    def indices(step: int, gen: torch.Generator) -> torch.Tensor:
        start = (step % per_epoch) * batch
        return shard[start : start + batch]

    torch.manual_seed(seed)
    model = TransformerNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
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
    name="truncated_data_transformer_adamw",
    expected="truncated_data",
    arch="transformer",
    optimizer="adamw",
    description="A DistributedSampler with num_replicas=4 left in a single-process run: the "
    "transformer only ever sees a fixed quarter of the sequences.",
    run=run,
)
