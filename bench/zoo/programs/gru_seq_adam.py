"""A GRU recalls the first of ten tokens, Adam."""

from __future__ import annotations

from zoo._parts import SeqNet, token_task
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="gru_seq_adam",
        family="rnn",
        data=token_task(seed, "first", length=10),
        build=lambda s: SeqNet(s, "gru", 10, 10),
        optimizer="adam",
        lr=5e-3,
        steps=300,
        batch_size=32,
        knobs=frozenset({"hidden"}),
    )


PROGRAM = Program("gru_seq_adam", "rnn", "embed-GRU(64)-linear, Adam 5e-3, first of 10", make)
