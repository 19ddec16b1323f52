"""Adaptive optimizer state against the gradients it scales (STUB: being written)."""

from __future__ import annotations

from typing import ClassVar

from unstuck.signals.base import CostTier, Tap

__all__ = ["OptimizerStateTap"]


class OptimizerStateTap(Tap):
    """Adam-family second moments against squared gradients; state missing at step > 0."""

    name: ClassVar[str] = "optimizer_state"
    tier: ClassVar[CostTier] = "sampled"

    def __init__(self, every: int = 32) -> None:
        self.every = every
