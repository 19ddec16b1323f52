"""Named loss components the user passes with ``guard.step(components=...)`` (STUB)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from unstuck.signals.base import CostTier, Tap

__all__ = ["LossComponentsTap"]


class LossComponentsTap(Tap):
    """Per-step values of each loss term, kept on the device until the flush."""

    name: ClassVar[str] = "loss_components"
    tier: ClassVar[CostTier] = "always"

    def record(self, step: int, components: Mapping[str, torch.Tensor]) -> None:
        """Keep this step's component values (detached, on the device)."""
