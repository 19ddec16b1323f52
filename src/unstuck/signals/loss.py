"""Training loss, one value per step, kept on the device until the flush."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, Reduction, Tap
from unstuck.signals.host import Series

__all__ = ["LossTap"]


class LossTap(Tap):
    """The scalar training loss of every step (the mean when per-sample losses are given).

    Non-finite values are kept as they are: they become the ``nonfinite`` signal, not an error.
    """

    name: ClassVar[str] = "loss"
    tier: ClassVar[CostTier] = "always"
    # Averaged over ranks: every rank's detectors, verdicts and probes read the same loss.
    reduction: ClassVar[Reduction] = "mean"
    provides: ClassVar[frozenset[str]] = frozenset({"loss", "nonfinite_loss"})

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._values: list[torch.Tensor] = []

    def on_loss(
        self, step: int, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        self._steps.append(step)
        self._values.append(loss if loss.ndim == 0 else loss.mean())

    def collect(self) -> Packet:
        if not self._values:
            return Packet()
        packet = Packet(tensors={"loss": torch.stack(self._values)}, host={"steps": self._steps})
        self._steps, self._values = [], []
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "loss" not in host:
            return {}
        values: list[float] = host["loss"]
        steps: list[int] = host["steps"]
        nonfinite = sum(1 for v in values if v != v or v in (float("inf"), float("-inf")))
        return {
            "loss": Series(steps, values),
            "nonfinite_loss": Series(steps[-1:], [float(nonfinite)]),
        }
