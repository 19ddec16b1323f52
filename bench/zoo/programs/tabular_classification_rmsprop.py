"""A GELU MLP on a 4-class make_classification table with RMSprop."""

from __future__ import annotations

from zoo._parts import mlp, sklearn_set
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="tabular_classification_rmsprop",
        family="mlp",
        data=sklearn_set("classification", seed),
        build=lambda s: mlp(s, 20, 4),
        optimizer="rmsprop",
        lr=1e-3,
        steps=300,
        batch_size=32,
        activation="gelu",
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program(
    "tabular_classification_rmsprop",
    "mlp",
    "20-64-64-4 GELU MLP, RMSprop 1e-3, make_classification (4 classes)",
    make,
)
