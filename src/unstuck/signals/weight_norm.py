"""Parameter norm and weight decay, for the over-regularization rule (STUB: being written)."""

from __future__ import annotations

from typing import ClassVar

from unstuck.signals.base import CostTier, Tap

__all__ = ["WeightNormTap"]


class WeightNormTap(Tap):
    """‖θ‖ once per flush and each group's weight decay."""

    name: ClassVar[str] = "weight_norm"
    tier: ClassVar[CostTier] = "always"
