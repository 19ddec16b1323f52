"""Hard subset: a quarter of the digits come from a low-resolution source (4x4 blocks averaged)."""

from __future__ import annotations

import numpy as np
import torch

from scenarios._common import RunResult, Scenario, digits, mlp, train


def _low_resolution(data_x: torch.Tensor, share: float, seed: int) -> None:
    """Replace ``share`` of the images (rows of 64 standardized pixels) by their 2x2-block
    version: each 4x4 quadrant becomes its mean, as a 2x2 scan upsampled to 8x8 would."""
    rng = np.random.default_rng(6000 + seed)
    idx = torch.as_tensor(rng.choice(data_x.shape[0], int(share * data_x.shape[0]), replace=False))
    images = data_x[idx].reshape(-1, 1, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(images, 4)
    data_x[idx] = torch.nn.functional.interpolate(pooled, scale_factor=4).reshape(-1, 64)


def run(seed: int, short: bool) -> RunResult:
    data = digits(seed)
    _low_resolution(data.x, 0.25, seed)
    torch.manual_seed(seed)
    model = mlp(64, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(
        model, opt, data, steps=400 if short else 1500, batch_size=32, seed=seed, per_sample=True
    )


SCENARIO = Scenario(
    name="hard_subset_mlp_adam",
    expected="hard_subset",
    arch="mlp",
    optimizer="adam",
    description="A quarter of the digits come from a 2x2 low-resolution scan: their label is only "
    "partly recoverable, so that mixed-class group stays unlearned under a falling mean.",
    run=run,
)
