"""Multinomial logistic regression on iris with SGD: a linear model, nothing to hide behind."""

from __future__ import annotations

from torch import nn

from zoo._parts import sklearn_set
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="logistic_iris_sgd",
        family="linear",
        data=sklearn_set("iris", seed),
        build=lambda s: nn.Linear(4, 3),
        optimizer="sgd",
        lr=0.1,
        steps=200,
        batch_size=16,
    )


PROGRAM = Program("logistic_iris_sgd", "linear", "logistic regression 4->3, SGD 0.1, iris", make)
