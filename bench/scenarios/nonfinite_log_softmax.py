"""A hand-written cross-entropy, log(softmax(x)), under a high LR: log(0) gives NaN."""

from __future__ import annotations

import torch
from torch.nn import functional

from scenarios._common import RunResult, Scenario, digits, mlp, train


def naive_cross_entropy(
    out: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    probs = torch.softmax(out, dim=1)
    per = -(functional.one_hot(y, out.shape[1]) * torch.log(probs)).sum(1)  # 0·log(0) = NaN
    return per.mean() if reduction == "mean" else per


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return train(
        model,
        opt,
        data,
        steps=400 if short else 1500,
        batch_size=32,
        seed=seed,
        loss_fn=naive_cross_entropy,
    )


SCENARIO = Scenario(
    name="nonfinite_log_softmax",
    expected="nonfinite",
    arch="mlp",
    optimizer="momentum",
    description="torch.log(torch.softmax(x)) as the loss with momentum SGD at lr=0.5: once a "
    "logit gap exceeds ~104 a probability underflows to 0 and 0·log(0) makes the loss NaN.",
    run=run,
    quick=True,
)
