"""Loss-component dominance: a reconstruction term with reduction="sum" beside a cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812

from scenarios._common import RunResult, Scenario, digits, train


class ClassifyAndReconstruct(torch.nn.Module):
    """A shared ReLU trunk with a class head and a reconstruction head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU()
        )
        self.classify = torch.nn.Linear(32, 10)
        self.reconstruct = torch.nn.Linear(32, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([self.classify(h), self.reconstruct(h)], dim=1)


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)

    def components(
        model: torch.nn.Module, out: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        ce = F.cross_entropy(out[:, :10], y)
        recon = F.mse_loss(out[:, 10:], data.x[idx], reduction="sum")  # the bug: sum, not mean
        return ce + recon, {"classification": ce.detach(), "reconstruction": recon.detach()}

    torch.manual_seed(seed)
    model = ClassifyAndReconstruct()
    # The largest lr that does not diverge with the summed term (1e-3 does).
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    return train(
        model,
        opt,
        data,
        steps=400 if short else 1500,
        batch_size=32,
        seed=seed,
        components=components,
    )


SCENARIO = Scenario(
    name="loss_component_dominance_mlp_momentum",
    expected="loss_component_dominance",
    arch="mlp",
    optimizer="momentum",
    description="An auxiliary reconstruction loss with reduction='sum' (~1000x the cross-entropy) "
    "sets the usable SGD lr, so the classification term barely moves.",
    run=run,
)
