"""Pure fp16 training: model.half() with plain SGD, no fp32 master weights, no loss scaling."""

from __future__ import annotations

import torch

from scenarios._common import Data, RunResult, Scenario, digits, mlp, train


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    # "Halve the memory": the model and the inputs cast to float16, the optimizer unchanged.
    data = Data(data.x.half(), data.y, data.x_val.half(), data.y_val, data.task)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10).half()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return train(model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed)


SCENARIO = Scenario(
    name="precision_underflow_fp16",
    expected="precision_underflow",
    arch="mlp",
    optimizer="momentum",
    description="model.half() with momentum SGD at lr=1e-3: most weight updates are below half "
    "an fp16 ulp of the weight and round away, so the weights barely move.",
    run=run,
)
