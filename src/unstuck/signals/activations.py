"""Activation statistics from forward hooks armed on sampled steps only (STUB: being written).

Contract (evidence names, see docs/signals.md): ``act_dead_fraction``, ``act_saturation``,
``act_scale`` and ``input_stats``.
"""

from __future__ import annotations

from typing import ClassVar

from unstuck.signals.base import CostTier, Tap

__all__ = ["ActivationTap"]


class ActivationTap(Tap):
    """Dead ReLU units, saturated sigmoid/tanh pre-activations, per-layer scale, input stats."""

    name: ClassVar[str] = "activations"
    tier: ClassVar[CostTier] = "sampled"

    def __init__(self, every: int = 32) -> None:
        self.every = every
