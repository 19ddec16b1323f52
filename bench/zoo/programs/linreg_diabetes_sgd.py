"""Linear regression on the diabetes data (standardized target) with SGD."""

from __future__ import annotations

from torch import nn

from zoo._parts import sklearn_set
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="linreg_diabetes_sgd",
        family="linear",
        data=sklearn_set("diabetes", seed),
        build=lambda s: nn.Linear(10, 1),
        optimizer="sgd",
        lr=0.05,
        steps=300,
        batch_size=16,
    )


PROGRAM = Program("linreg_diabetes_sgd", "linear", "linear regression 10->1, SGD 0.05", make)
