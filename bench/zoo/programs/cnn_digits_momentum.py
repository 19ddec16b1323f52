"""A two-conv CNN without normalisation on 8×8 digits, SGD with momentum."""

from __future__ import annotations

from zoo._parts import CNN, digits
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="cnn_digits_momentum",
        family="cnn",
        data=digits(seed),
        build=lambda s: CNN(s, 10),
        optimizer="momentum",
        lr=0.02,
        steps=300,
        batch_size=32,
        knobs=frozenset({"activation", "hidden", "norm"}),
    )


PROGRAM = Program("cnn_digits_momentum", "cnn", "conv16-conv32-pool-linear, momentum 0.02", make)
