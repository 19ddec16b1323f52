"""Poor initialization: a plain ReLU CNN with every weight drawn from normal(0, 0.01)."""

from __future__ import annotations

import torch

from scenarios._activations import init_normal_, small_cnn
from scenarios._common import RunResult, Scenario, digits, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    # normal_(std=0.01) on 3×3 convs (fan-in 144-288): each ReLU conv layer multiplies the
    # scale by ~0.1, so six convs leave ~1e-5 of the first layer's signal.
    model = init_normal_(small_cnn((16, 32, 32, 32, 32, 32)), 0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1200, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="poor_initialization_cnn_small",
    expected="poor_initialization",
    arch="cnn",
    optimizer="momentum",
    description="A plain 6-conv ReLU CNN initialised with normal(0, 0.01): the activation scale "
    "collapses with depth and the loss stays at log(10).",
    run=run,
)
