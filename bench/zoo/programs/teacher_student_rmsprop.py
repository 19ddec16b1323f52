"""A tanh student MLP fits a soft-committee teacher (Saad & Solla 1995) with RMSprop."""

from __future__ import annotations

from zoo._parts import mlp, teacher_student
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="teacher_student_rmsprop",
        family="mlp",
        data=teacher_student(seed),
        build=lambda s: mlp(s, 20, 1),
        optimizer="rmsprop",
        lr=1e-3,
        steps=300,
        batch_size=32,
        activation="tanh",
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program(
    "teacher_student_rmsprop", "mlp", "20-64-64-1 tanh student, RMSprop 1e-3, erf teacher", make
)
