"""Learning rate of every param group, as the user's schedule sets it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, StepContext, Tap
from unstuck.signals.host import Series

__all__ = ["LRTap", "read_lr"]


def read_lr(group: dict[str, Any]) -> float | torch.Tensor:
    """The group's LR without a host sync: a float, or a detached copy of a tensor LR."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        return lr.detach().clone()
    return float(lr)


class LRTap(Tap):
    """The LR per param group, recorded where it changes (tensor LRs: at every step).

    This is the user's schedule; unstuck's own multiplier is recorded beside it as
    ``lr_multiplier``, so the report can show both. Tensor LRs (fused/capturable optimizers) stay
    on the device until the flush.
    """

    name: ClassVar[str] = "lr"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset({"lr/*"})
    # Read before the LR multiplier's own pre-hook scales the LR: the user's schedule.
    in_step_hook: ClassVar[bool] = True

    def __init__(self) -> None:
        self._rows: list[tuple[int, list[float | torch.Tensor]]] = []
        self._last: list[float] | None = None
        self.current_step = 0

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        lrs = [read_lr(g) for g in ctx.optimizer.param_groups]
        if all(isinstance(v, float) for v in lrs):
            if lrs == self._last:
                return
            self._last = lrs  # type: ignore[assignment]
        self._rows.append((self.current_step, lrs))

    def collect(self) -> Packet:
        if not self._rows:
            return Packet()
        tensor_rows = [
            (i, j, v)
            for i, (_, lrs) in enumerate(self._rows)
            for j, v in enumerate(lrs)
            if isinstance(v, torch.Tensor)
        ]
        packet = Packet(host={"rows": self._rows})
        if tensor_rows:
            packet.tensors["tensor_lrs"] = torch.stack([v.float() for _, _, v in tensor_rows])
            packet.host["tensor_index"] = [(i, j) for i, j, _ in tensor_rows]
        self._rows = []
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "rows" not in host:
            return {}
        rows: list[tuple[int, list[Any]]] = [(s, list(v)) for s, v in host["rows"]]
        for (i, j), value in zip(host.get("tensor_index", []), host.get("tensor_lrs", [])):
            rows[i][1][j] = float(value)
        out: dict[str, Any] = {}
        n_groups = len(rows[-1][1])
        for g in range(n_groups):
            out[f"lr/{g}"] = Series(
                [s for s, _ in rows], [float(v[g]) for _, v in rows if g < len(v)]
            )
        return out
