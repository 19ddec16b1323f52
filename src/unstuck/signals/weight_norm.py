"""Parameter norm and weight decay, for the over-regularization rule.

At each flush the tap takes ‖θ‖ of every optimizer parameter with one ``_foreach_norm`` (no
per-step cost) and reports the global norm, the norm of each param group, each group's
``weight_decay`` and whether the optimizer applies it decoupled from the gradient (AdamW,
Loshchilov & Hutter 2019) or as an L2 term added to the gradient (SGD, Adam, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, StepContext, Tap, local_shard
from unstuck.signals.grad_norm import NormPlan
from unstuck.signals.host import Series

__all__ = ["WeightNormTap", "decoupled_decay"]


def decoupled_decay(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """Whether ``weight_decay`` shrinks the weights directly rather than adding λθ to the grad."""
    name = type(optimizer).__name__
    if name == "AdamW":
        return True
    return bool(group.get("decoupled_weight_decay", False))  # NAdam/RAdam/Adam option


class WeightNormTap(Tap):
    """‖θ‖ once per flush and each group's weight decay."""

    name: ClassVar[str] = "weight_norm"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset(
        {
            "weight_norm",
            "weight_norm_initial",
            "weight_norm_per_group",
            "weight_decay",
            "weight_decay_decoupled",
            "weight_decay_lr",
        }
    )

    def __init__(self) -> None:
        self._ctx: StepContext | None = None
        self._plan: NormPlan | None = None
        self._initial: torch.Tensor | None = None
        self.current_step = 0

    def bind(self, ctx: StepContext) -> None:
        self._ctx = ctx
        home = ctx.params[0].device if ctx.params else torch.device("cpu")
        self._plan = NormPlan([local_shard(p) for p in ctx.params], home)
        # ‖θ‖ as the Guard starts (initialisation or the loaded checkpoint), sent at the first
        # flush: the reference "shrinking weights" is measured against.
        self._initial = (
            self._plan.norms([local_shard(p.detach()) for p in ctx.params]) if ctx.params else None
        )

    def collect(self) -> Packet:
        ctx, plan = self._ctx, self._plan
        if ctx is None or plan is None or not ctx.params:
            return Packet()
        norms = plan.norms([local_shard(p.detach()) for p in ctx.params])
        groups = ctx.optimizer.param_groups
        tensors = {"param_norms": norms}
        if self._initial is not None:
            tensors["initial_norms"] = self._initial
            self._initial = None
        return Packet(
            tensors=tensors,
            host={
                "step": self.current_step,
                "group_index": list(ctx.group_index),
                "weight_decay": [float(g.get("weight_decay", 0.0) or 0.0) for g in groups],
                "decoupled": [decoupled_decay(ctx.optimizer, g) for g in groups],
                "lr": [_lr(g) for g in groups],
            },
        )

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "param_norms" not in host:
            return {}
        norms = np.asarray(host["param_norms"], dtype=np.float64)
        index = np.asarray(host["group_index"], dtype=np.int64)
        n_groups = len(host["weight_decay"])
        per_group = [float(np.sqrt(np.sum(norms[index == g] ** 2))) for g in range(n_groups)]
        step = int(host["step"])
        out: dict[str, Any] = {}
        if "initial_norms" in host:
            initial = np.asarray(host["initial_norms"], dtype=np.float64)
            out["weight_norm_initial"] = float(np.sqrt(np.sum(initial**2)))
        return out | {
            "weight_norm": Series([step], [float(np.sqrt(np.sum(norms**2)))]),
            "weight_norm_per_group": per_group,
            "weight_decay": list(host["weight_decay"]),
            "weight_decay_decoupled": list(host["decoupled"]),
            "weight_decay_lr": list(host["lr"]),
        }


def _lr(group: dict[str, Any]) -> float:
    lr = group.get("lr", 0.0)
    if isinstance(lr, torch.Tensor):
        return float("nan")  # a tensor LR is read by the LR tap at flush; not needed here
    return float(lr)
