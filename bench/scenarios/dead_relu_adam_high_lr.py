"""Dead ReLUs killed by Adam at lr=0.1 (an SGD-sized learning rate) on a ReLU MLP."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = mlp(64, 128, 10, depth=3)
    # Adam at lr=0.1, a learning rate copied from an SGD recipe: the first steps move every
    # weight by ~0.1 and push most hidden units negative for every input (CS231n: "as much as
    # 40% of your network can be dead" with a high learning rate); they never fire again.
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return train(model, opt, data, steps=700 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="dead_relu_adam_high_lr",
    expected="dead_relu",
    arch="mlp",
    optimizer="adam",
    description="Adam with lr=0.1 on a ReLU MLP: the first large steps kill most hidden units, "
    "which never fire again, and the loss stalls near log(10).",
    run=run,
)
