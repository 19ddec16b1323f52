"""A GPT-style causal decoder learns next tokens of a sparse Markov chain, AdamW, warm-up +
cosine."""

from __future__ import annotations

from zoo._parts import GPT, markov_tokens
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="gpt_markov_adamw",
        family="transformer",
        data=markov_tokens(seed),
        build=lambda s: GPT(s, 16, 16),
        optimizer="adamw",
        lr=1e-2,
        weight_decay=0.01,
        schedule="warmup_cosine",
        warmup=30,
        steps=250,
        batch_size=32,
        knobs=frozenset({"activation", "depth", "hidden", "norm_first"}),
    )


PROGRAM = Program(
    "gpt_markov_adamw", "transformer", "causal pre-LN decoder (d=32, 2 layers), AdamW 1e-2", make
)
