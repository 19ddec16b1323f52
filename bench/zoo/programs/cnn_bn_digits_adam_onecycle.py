"""A two-conv CNN with BatchNorm on 8×8 digits, Adam under a OneCycle schedule."""

from __future__ import annotations

from zoo._parts import CNN, digits
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="cnn_bn_digits_adam_onecycle",
        family="cnn",
        data=digits(seed),
        build=lambda s: CNN(s, 10),
        optimizer="adam",
        lr=3e-3,
        schedule="onecycle",
        steps=300,
        batch_size=32,
        norm=True,
        knobs=frozenset({"activation", "hidden", "norm"}),
    )


PROGRAM = Program(
    "cnn_bn_digits_adam_onecycle", "cnn", "conv-BN-ReLU ×2, pool, linear; Adam OneCycle 3e-3", make
)
