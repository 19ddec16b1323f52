"""Output activation: a softmax inside the model, fed to F.cross_entropy (a double softmax)."""

from __future__ import annotations

import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train

HEAD_GAIN = 100.0  # the head's weights × this: logits in the hundreds, the softmax saturated


class SoftmaxOutput(torch.nn.Module):
    """The fault: the model returns probabilities, and F.cross_entropy applies its own softmax."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=-1)


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    torch.manual_seed(seed)
    inner = mlp(64, 64, 10, depth=2)
    with torch.no_grad():
        inner[-1].weight.mul_(HEAD_GAIN)
    model = SoftmaxOutput(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="output_activation_double_softmax",
    expected="output_activation",
    arch="mlp",
    optimizer="sgd",
    description="a softmax appended to a digits MLP whose output goes to F.cross_entropy, head "
    "weights × 100: the loss sees saturated probabilities, is confined to a one-nat band, and "
    "its gradient vanishes.",
    run=run,
)
