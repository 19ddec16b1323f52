"""An MLP autoencoder reconstructing the digits through a 16-unit bottleneck, Adam."""

from __future__ import annotations

from zoo._parts import Autoencoder, digits
from zoo._spec import Data, Program, Spec


def make(seed: int) -> Spec:
    d = digits(seed)
    return Spec(
        program="autoencoder_digits_adam",
        family="autoencoder",
        data=Data(d.x, d.x.clone(), d.x_val, d.x_val.clone(), "regression"),
        build=lambda s: Autoencoder(s, 64),
        optimizer="adam",
        lr=2e-3,
        steps=300,
        batch_size=32,
        knobs=frozenset({"activation", "hidden"}),
    )


PROGRAM = Program(
    "autoencoder_digits_adam", "autoencoder", "64-64-16-64-64 ReLU autoencoder, Adam 2e-3", make
)
