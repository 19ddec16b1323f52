"""A tanh MLP on the wine data with Nesterov momentum and a step-decay schedule."""

from __future__ import annotations

from zoo._parts import mlp, sklearn_set
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="mlp_wine_nesterov_step",
        family="mlp",
        data=sklearn_set("wine", seed),
        build=lambda s: mlp(s, 13, 3),
        optimizer="nesterov",
        lr=0.02,
        schedule="step",
        steps=200,
        batch_size=16,
        hidden=32,
        activation="tanh",
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program(
    "mlp_wine_nesterov_step", "mlp", "13-32-32-3 tanh MLP, Nesterov 0.02, step decay, wine", make
)
