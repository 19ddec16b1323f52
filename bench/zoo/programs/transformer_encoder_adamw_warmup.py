"""A pre-LN 2-layer Transformer encoder finds the most frequent token; AdamW, warm-up + cosine."""

from __future__ import annotations

from zoo._parts import TransformerClassifier, token_task
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="transformer_encoder_adamw_warmup",
        family="transformer",
        data=token_task(seed, "mode", length=8),
        build=lambda s: TransformerClassifier(s, 10, 8, 10),
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.01,
        schedule="warmup_cosine",
        warmup=30,
        steps=300,
        batch_size=32,
        knobs=frozenset({"activation", "depth", "hidden", "norm_first"}),
    )


PROGRAM = Program(
    "transformer_encoder_adamw_warmup",
    "transformer",
    "pre-LN TransformerEncoder (d=32, 2 layers), AdamW 3e-3, warm-up + cosine",
    make,
)
