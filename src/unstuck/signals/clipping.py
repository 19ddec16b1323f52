"""Gradient clipping: how often the gradient norm is cut (STUB: being written)."""

from __future__ import annotations

from typing import ClassVar

import torch

from unstuck.signals.base import CostTier, Tap

__all__ = ["ClipTap"]


class ClipTap(Tap):
    """Pre-clip total norms and the clip threshold, recorded by ``Guard.clip_grad_norm_``."""

    name: ClassVar[str] = "clipping"
    tier: ClassVar[CostTier] = "always"

    def record(self, step: int, total_norm: torch.Tensor, max_norm: float) -> None:
        """Keep the pre-clip norm on the device; no host sync."""
