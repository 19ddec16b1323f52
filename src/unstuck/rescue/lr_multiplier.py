"""unstuck's LR multiplier, applied around ``optimizer.step`` over the user's schedule.

Why around the step and not by editing ``param_group["lr"]``: schedulers such as ``LambdaLR``
recompute ``base_lr × λ(step)`` and would erase the edit at their next step, and
``ReduceLROnPlateau`` would compound it (REFERENCE.md §5). The pre-hook multiplies each group's
LR just before the update and the post-hook puts the user's value back, so whatever schedule the
user runs — warmup, OneCycle, cosine, plateau — keeps working, and the effective LR is
``schedule × multiplier``. Tensor LRs (fused/capturable optimizers) are edited in place.

Besides the steady ``value`` the multiplier can run a *shape* over the next optimizer steps: a
cosine decay from a peak (a warm restart), a triangle up and down (a cyclical bump), a linear
ramp (a warm-up) or an exponential ramp (the LR range test). Shapes are primitives, advanced
in the post-hook by a Python counter: no host sync.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["SHAPES", "LRMultiplier", "shape_factor"]

SHAPES = ("cosine", "triangle", "linear", "exp")


def shape_factor(shape: str, start: float, end: float, length: int, elapsed: int) -> float:
    """The factor of a shape at optimizer step ``elapsed`` (0-based) of ``length``.

    ``cosine`` falls from ``start`` to ``end`` along half a cosine; ``triangle`` rises linearly
    from ``end`` to ``start`` at the midpoint and back to ``end``; ``linear`` goes in a straight
    line from ``start`` to ``end``; ``exp`` goes geometrically from ``start`` to ``end``. Past
    ``length`` every shape is at ``end`` (a finished exp ramp holds it; the others end).
    """
    if elapsed >= length:
        return end
    t = elapsed / max(length - 1, 1)
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if shape == "triangle":
        return end + (start - end) * (1.0 - abs(2.0 * t - 1.0))
    if shape == "linear":
        return start + (end - start) * t
    if shape == "exp":
        return float(start * (end / start) ** t)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


class LRMultiplier:
    """A global factor over every param group's LR; ``value == 1`` costs one comparison."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.value = 1.0
        self.shape: dict[str, Any] | None = None
        self._saved: list[Any] | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def set(self, value: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"LR multiplier must be a positive finite number, got {value!r}")
        self.value = float(value)

    def set_shape(self, shape: str, start: float, end: float, length: int) -> None:
        """Run ``shape`` over the next ``length`` optimizer steps, as a factor on ``value``."""
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        for name, v in (("start", start), ("end", end)):
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"shape {name} must be a positive finite number, got {v!r}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"shape length must be a positive int, got {length!r}")
        self.shape = {
            "shape": shape,
            "start": float(start),
            "end": float(end),
            "length": length,
            "elapsed": 0,
        }

    def clear_shape(self) -> None:
        self.shape = None

    def current(self) -> float:
        """The factor the next optimizer step will use (``value`` × the shape's factor)."""
        if self.shape is None:
            return self.value
        s = self.shape
        return self.value * shape_factor(
            s["shape"], s["start"], s["end"], s["length"], s["elapsed"]
        )

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        factor = self.value if self.shape is None else self.current()
        if factor == 1.0:
            return
        self._saved = []
        for group in self.optimizer.param_groups:
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                self._saved.append(lr.detach().clone())
                lr.mul_(factor)
            else:
                self._saved.append(lr)
                group["lr"] = lr * factor

    def advance_shape(self) -> None:
        """One optimizer step of the running shape has passed (a finished bump ends)."""
        shape = self.shape
        if shape is not None:
            shape["elapsed"] += 1
            if shape["elapsed"] >= shape["length"] and shape["shape"] != "exp":
                self.shape = None  # a finished bump leaves the steady value alone

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.advance_shape()
        if self._saved is None:
            return
        for group, saved in zip(self.optimizer.param_groups, self._saved):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].copy_(saved)
            else:
                group["lr"] = saved
        self._saved = None

    def effective_lrs(self) -> list[float]:
        """The LR each group steps with next (a host read; not for the hot path)."""
        factor = self.current()
        return [float(g["lr"]) * factor for g in self.optimizer.param_groups]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "shape": dict(self.shape) if self.shape else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set(float(state.get("value", 1.0)))
        shape = state.get("shape")
        self.shape = dict(shape) if shape else None
