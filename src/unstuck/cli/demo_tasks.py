"""The demo's tasks, apart from the training code so ``unstuck --help`` needs no torch."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TASK", "TASKS", "Task"]


@dataclass(frozen=True)
class Task:
    description: str
    lr: float
    steps: int
    quick_steps: int
    batch_size: int = 64
    hidden: int = 64
    depth: int = 2
    activation: str = "relu"


TASKS: dict[str, Task] = {
    "digits-low-lr": Task(
        description="2-hidden-layer ReLU MLP on scikit-learn digits, SGD lr=3e-4 (far too low)",
        lr=3e-4,
        steps=4000,
        quick_steps=1500,
    ),
    "digits-sigmoid": Task(
        description="2-hidden-layer sigmoid MLP on scikit-learn digits, SGD lr=0.01",
        lr=0.01,
        steps=4000,
        quick_steps=1500,
        activation="sigmoid",
    ),
}
DEFAULT_TASK = "digits-low-lr"
