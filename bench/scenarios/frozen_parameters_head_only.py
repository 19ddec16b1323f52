"""A CNN trained from scratch with an optimizer copied from a fine-tuning recipe: head only."""

from __future__ import annotations

import torch
from torch import nn

from scenarios._common import RunResult, Scenario, digits, train


class SmallCNN(nn.Module):
    """Conv backbone and a linear head, on the 8×8 digits images."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x.view(-1, 1, 8, 8)))


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    # The bug: the backbone is randomly initialised (no pretrained weights) and still has
    # requires_grad=True, but the optimizer only sees the head, as in a linear-probe recipe.
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    return train(model, opt, data, steps=300 if short else 1200, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="frozen_parameters_head_only",
    expected="frozen_parameters",
    arch="cnn",
    optimizer="adam",
    description="Adam built over model.head.parameters() only: the random conv backbone "
    "(requires_grad=True) is never updated, so the run plateaus at a linear probe of random "
    "features.",
    run=run,
    quick=True,
)
