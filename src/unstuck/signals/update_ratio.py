"""Update-to-weight ratio ‖Δθ‖ / ‖θ‖, sampled every N optimizer steps.

The most direct reading of whether the learning rate fits the model: Karpathy's rule of thumb
puts a healthy ratio near 1e-3; DeepDiagnosis flags it outside [1e-5, 1e-1] (REFERENCE.md §3).
Sampled because it copies the parameters before the step. The powers of two before the first
regular sample (steps 1, 2, 4, ... < N) are read as well, into a series of their own,
``update_ratio_early``: a run shorter than the cadence still has a few ratios to judge its LR
by, and the regular series that every rule reads keeps its cadence.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, StepContext, Tap, early_step, local_shard
from unstuck.signals.grad_norm import NormPlan
from unstuck.signals.host import Series

__all__ = ["UpdateRatioTap"]

_TINY = 1e-12  # keeps the ratio finite for all-zero parameters


class UpdateRatioTap(Tap):
    """Global and per-tensor ‖θ_after − θ_before‖ / ‖θ_before‖ on sampled optimizer steps."""

    name: ClassVar[str] = "update_ratio"
    tier: ClassVar[CostTier] = "sampled"
    provides: ClassVar[frozenset[str]] = frozenset(
        {"update_ratio", "update_ratio_per_tensor", "update_ratio_early"}
    )
    early_samples: ClassVar[bool] = True

    def __init__(self, every: int = 25) -> None:
        if every < 1:
            raise ValueError(f"update_ratio_every must be >= 1, got {every!r}")
        self.every = every
        self._before: list[torch.Tensor] | None = None
        self._plan: NormPlan | None = None
        self._rows: list[torch.Tensor] = []  # per sampled step: [‖Δ‖_i..., ‖θ‖_i...]
        self._steps: list[int] = []
        self._early: list[bool] = []  # per sampled step: one of the early powers of two
        self.current_step = 0

    def bind(self, ctx: StepContext) -> None:
        home = ctx.params[0].device if ctx.params else torch.device("cpu")
        self._plan = NormPlan([local_shard(p) for p in ctx.params], home)

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        if opt_step % self.every == 0 or early_step(opt_step, self.every):
            self._before = [local_shard(p.detach()).clone() for p in ctx.params]

    def on_post_step(self, ctx: StepContext, opt_step: int) -> None:
        if self._before is None or self._plan is None:
            return
        now = [local_shard(p.detach()) for p in ctx.params]
        deltas = torch._foreach_sub(now, self._before)
        row = torch.cat([self._plan.norms(list(deltas)), self._plan.norms(list(self._before))])
        self._rows.append(row)
        self._steps.append(self.current_step)
        self._early.append(early_step(opt_step, self.every))  # the hub passes the same step
        self._before = None

    def collect(self) -> Packet:
        if not self._rows:
            return Packet()
        packet = Packet(
            tensors={"norms": torch.stack(self._rows)},
            host={"steps": self._steps, "early": self._early},
        )
        self._rows, self._steps, self._early = [], [], []
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "norms" not in host:
            return {}
        steps = np.asarray(host["steps"], dtype=np.int64)
        norms = np.asarray(host["norms"], dtype=np.float64).reshape(len(steps), 2, -1)
        delta, weight = norms[:, 0, :], norms[:, 1, :]
        total = np.sqrt((delta**2).sum(axis=1)) / (np.sqrt((weight**2).sum(axis=1)) + _TINY)
        early = np.asarray(host.get("early", [False] * len(steps)), dtype=bool)
        out: dict[str, Any] = {}
        if (~early).any():
            out["update_ratio"] = Series(steps[~early].tolist(), total[~early].tolist())
            out["update_ratio_per_tensor"] = delta[~early] / (weight[~early] + _TINY)
        if early.any():
            out["update_ratio_early"] = Series(steps[early].tolist(), total[early].tolist())
        return out
