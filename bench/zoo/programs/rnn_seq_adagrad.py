"""A vanilla tanh RNN finds the largest of six tokens, Adagrad."""

from __future__ import annotations

from zoo._parts import SeqNet, token_task
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="rnn_seq_adagrad",
        family="rnn",
        data=token_task(seed, "max", length=6),
        build=lambda s: SeqNet(s, "rnn", 10, 10),
        optimizer="adagrad",
        lr=0.05,
        steps=300,
        batch_size=32,
        activation="tanh",
        knobs=frozenset({"activation", "hidden"}),
    )


PROGRAM = Program("rnn_seq_adagrad", "rnn", "embed-RNN(tanh, 64)-linear, Adagrad 0.05, max", make)
