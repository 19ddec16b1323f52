"""Scale the learning rate up or down, as a multiplier over the user's schedule."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from unstuck.rescue.base import Action, Controls

MIN_MULTIPLIER = 1e-6  # guards against compounding cuts to zero
MAX_MULTIPLIER = 1e4  # and against compounding raises to overflow


class LRScale(Action):
    """Multiply unstuck's LR multiplier by ``factor`` (< 1 lowers, > 1 raises the LR)."""

    name: ClassVar[str] = "lr_scale"
    changes_lr: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Changes the effective learning rate by a factor while your scheduler keeps running: "
        "unstuck multiplies each group's LR just before optimizer.step and restores your value "
        "after, so warmup, cosine, OneCycle and LambdaLR schedules compose with it."
    )

    example_params: ClassVar[dict[str, Any]] = {"factor": 3.0}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"factor": 0.0},
        {"factor": float("nan")},
    )

    def validate(self, params: dict[str, Any]) -> None:
        for key in ("factor", "estimate"):
            value = params.get(key, 1.0 if key == "estimate" else None)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"lr_scale needs a positive finite {key!r}, got {value!r}")
        unknown = set(params) - {"factor", "estimate", "label"}
        if unknown:
            raise ValueError(
                f"lr_scale: unknown parameters {sorted(unknown)}; known: factor, estimate"
            )

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        self.validate(params)
        before = controls.lr.value
        after = min(max(before * float(params["factor"]), MIN_MULTIPLIER), MAX_MULTIPLIER)
        controls.lr.set(after)
        return {"multiplier_before": before, "multiplier_after": after}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.lr.set(float(token["multiplier_before"]))

    def describe(self, params: dict[str, Any]) -> str:
        factor = float(params.get("factor", 1.0))
        return f"lr ×{factor:.3g}"
