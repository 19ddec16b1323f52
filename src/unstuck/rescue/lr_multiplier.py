"""unstuck's LR multiplier, applied around ``optimizer.step`` over the user's schedule.

Why around the step and not by editing ``param_group["lr"]``: schedulers such as ``LambdaLR``
recompute ``base_lr × λ(step)`` and would erase the edit at their next step, and
``ReduceLROnPlateau`` would compound it (REFERENCE.md §5). The pre-hook multiplies each group's
LR just before the update and the post-hook puts the user's value back, so whatever schedule the
user runs — warmup, OneCycle, cosine, plateau — keeps working, and the effective LR is
``schedule × multiplier``. Tensor LRs (fused/capturable optimizers) are edited in place.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LRMultiplier"]


class LRMultiplier:
    """A global factor over every param group's LR; ``value == 1`` costs one comparison."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.value = 1.0
        self._saved: list[Any] | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def set(self, value: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"LR multiplier must be a positive finite number, got {value!r}")
        self.value = float(value)

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.value == 1.0:
            return
        self._saved = []
        for group in self.optimizer.param_groups:
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                self._saved.append(lr.detach().clone())
                lr.mul_(self.value)
            else:
                self._saved.append(lr)
                group["lr"] = lr * self.value

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._saved is None:
            return
        for group, saved in zip(self.optimizer.param_groups, self._saved):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].copy_(saved)
            else:
                group["lr"] = saved
        self._saved = None

    def effective_lrs(self) -> list[float]:
        """The LR each group steps with now (a host read; not for the hot path)."""
        return [float(g["lr"]) * self.value for g in self.optimizer.param_groups]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set(float(state.get("value", 1.0)))
