"""Named loss components the user passes with ``guard.step(components=...)``.

Each step's values stay on the device until the flush, where they become one series per term,
``loss_component/<name>``, plus ``loss_components_start`` (each term's mean over the first flush
it appeared in: how big it was before training moved it) for the dominance rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, Tap
from unstuck.signals.host import COMPONENT_PREFIX, Series

__all__ = ["COMPONENT_PREFIX", "MAX_COMPONENTS", "LossComponentsTap"]

MAX_COMPONENTS = 32  # distinct term names tracked; more is a logging mistake, not a loss


class LossComponentsTap(Tap):
    """Per-step values of each loss term, kept on the device until the flush."""

    name: ClassVar[str] = "loss_components"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset({"loss_component/*", "loss_components_start"})

    def __init__(self) -> None:
        self._pending: dict[str, tuple[list[int], list[torch.Tensor]]] = {}
        self.start: dict[str, float] = {}

    def record(self, step: int, components: Mapping[str, torch.Tensor]) -> None:
        """Keep this step's component values (detached, on the device)."""
        for name, value in components.items():
            entry = self._pending.get(name)
            if entry is None:
                if len(self._pending) + len(self.start) >= MAX_COMPONENTS and (
                    name not in self.start
                ):
                    continue
                entry = self._pending[name] = ([], [])
            entry[0].append(int(step))
            entry[1].append(value.detach().reshape(()))

    def collect(self) -> Packet:
        packet = Packet()
        for name, (steps, values) in self._pending.items():
            packet.tensors[COMPONENT_PREFIX + name] = torch.stack([v.float() for v in values])
            packet.host["steps:" + name] = list(steps)
        self._pending = {}
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, steps in host.items():
            if not key.startswith("steps:"):
                continue
            name = key[len("steps:") :]
            values = [float(v) for v in host.get(COMPONENT_PREFIX + name, [])]
            if len(values) != len(steps) or not values:
                continue
            out[COMPONENT_PREFIX + name] = Series(list(steps), values)
            if name not in self.start:
                finite = [v for v in values if v == v and abs(v) != float("inf")]
                if finite:
                    self.start[name] = sum(finite) / len(finite)
        if self.start:
            out["loss_components_start"] = dict(self.start)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"start": dict(self.start)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = {str(k): float(v) for k, v in state.get("start", {}).items()}
