"""A small ReLU MLP on make_moons with plain SGD: the textbook nonlinear toy problem."""

from __future__ import annotations

from zoo._parts import mlp, sklearn_set
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="mlp_moons_sgd",
        family="mlp",
        data=sklearn_set("moons", seed),
        build=lambda s: mlp(s, 2, 2),
        optimizer="sgd",
        lr=0.2,
        steps=300,
        batch_size=32,
        hidden=32,
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program("mlp_moons_sgd", "mlp", "2-32-32-2 ReLU MLP, SGD 0.2, make_moons", make)
