"""Saddle: a deep linear network with a tiny initialization on a low-rank linear teacher."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, train
from scenarios._h4 import low_rank_teacher


def run(seed: int, short: bool) -> RunResult:
    data = low_rank_teacher(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32, bias=False), torch.nn.Linear(32, 8, bias=False)
    )
    for layer in model:  # the fault: "small random weights" instead of the default init
        torch.nn.init.normal_(layer.weight, std=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    return train(model, opt, data, steps=400 if short else 1200, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="saddle_point_deep_linear",
    expected="saddle_point",
    arch="linear",
    optimizer="sgd",
    description="Two-layer linear net initialized at std 1e-4 on a rank-3 linear teacher: the "
    "origin is a saddle and SGD waits ~ln(1/init)/(lr·strength) steps before each mode drops "
    "(Saxe et al. 2014).",
    run=run,
    quick=True,
)
