"""Mixed precision: loss scale, skipped steps, exactly-zero gradients (STUB: being written)."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.signals.base import CostTier, Tap

__all__ = ["PrecisionTap"]


class PrecisionTap(Tap):
    """GradScaler scale and skipped steps, and the share of gradient entries exactly zero."""

    name: ClassVar[str] = "precision"
    tier: ClassVar[CostTier] = "sampled"

    def __init__(self, every: int = 32, scaler: Any = None) -> None:
        self.every = every
        self.scaler = scaler
