"""Parameter checksums compared across ranks, once per flush (STUB: being written)."""

from __future__ import annotations

from typing import ClassVar

from unstuck.signals.base import CostTier, Tap

__all__ = ["RankChecksumTap"]


class RankChecksumTap(Tap):
    """When torch.distributed is initialised, gathers a checksum of the parameters per rank."""

    name: ClassVar[str] = "rank_checksum"
    tier: ClassVar[CostTier] = "always"
