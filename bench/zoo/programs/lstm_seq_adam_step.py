"""An LSTM finds the largest token of a sequence, Adam with step decay."""

from __future__ import annotations

from zoo._parts import SeqNet, token_task
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="lstm_seq_adam_step",
        family="rnn",
        data=token_task(seed, "max"),
        build=lambda s: SeqNet(s, "lstm", 10, 10),
        optimizer="adam",
        lr=5e-3,
        schedule="step",
        steps=300,
        batch_size=32,
        knobs=frozenset({"hidden"}),
    )


PROGRAM = Program("lstm_seq_adam_step", "rnn", "embed-LSTM(64)-linear, Adam 5e-3 step, max", make)
