"""A two-layer ReLU MLP on scikit-learn's 8×8 digits with Adam: the first thing anyone trains."""

from __future__ import annotations

from zoo._parts import digits, mlp
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="mlp_digits_adam",
        family="mlp",
        data=digits(seed),
        build=lambda s: mlp(s, 64, 10),
        optimizer="adam",
        lr=1e-3,
        steps=300,
        batch_size=32,
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program("mlp_digits_adam", "mlp", "64-64-64-10 ReLU MLP, Adam 1e-3, digits", make)
