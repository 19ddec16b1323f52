"""A tabular classifier: Linear-BatchNorm-ReLU blocks on breast cancer, AdamW, warm-up + cosine."""

from __future__ import annotations

from zoo._parts import mlp, sklearn_set
from zoo._spec import Program, Spec


def make(seed: int) -> Spec:
    return Spec(
        program="tabular_breast_cancer_adamw_cosine",
        family="mlp",
        data=sklearn_set("breast_cancer", seed),
        build=lambda s: mlp(s, 30, 2),
        optimizer="adamw",
        lr=3e-3,
        weight_decay=1e-2,
        schedule="warmup_cosine",
        warmup=20,
        steps=250,
        batch_size=32,
        norm=True,
        knobs=frozenset({"activation", "depth", "hidden", "norm"}),
    )


PROGRAM = Program(
    "tabular_breast_cancer_adamw_cosine",
    "mlp",
    "30-64(BN)-64(BN)-2 tabular classifier, AdamW 3e-3, warm-up + cosine, breast cancer",
    make,
)
