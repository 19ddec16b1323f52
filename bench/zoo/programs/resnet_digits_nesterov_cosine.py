"""A ResNet-style stack of three BatchNorm residual blocks on 8×8 digits, Nesterov, warm-up +
cosine: the small cousin of the standard image recipe."""

from __future__ import annotations

from zoo._parts import ResNet, digits
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="resnet_digits_nesterov_cosine",
        family="resnet",
        data=digits(seed),
        build=lambda s: ResNet(s, 10),
        optimizer="nesterov",
        lr=0.05,
        schedule="warmup_cosine",
        warmup=20,
        steps=250,
        batch_size=32,
        depth=3,
        norm=True,
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program(
    "resnet_digits_nesterov_cosine",
    "resnet",
    "stem + 3 BN residual blocks (16 ch), Nesterov 0.05, warm-up + cosine",
    make,
)
