"""Scale the learning rate up or down, as a multiplier over the user's schedule."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from unstuck.rescue.base import Action, Controls
from unstuck.rescue.policy import Proposal
from unstuck.types import ActionRecord

MIN_MULTIPLIER = 1e-6  # guards against compounding cuts to zero
MAX_MULTIPLIER = 1e4  # and against compounding raises to overflow
FOLLOW_UP_MIN = 2.0  # a remaining LR factor below 2× (either way) is not worth another horizon


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

    def raises_lr(self, params: dict[str, Any]) -> bool:
        factor = params.get("factor")
        return isinstance(factor, (int, float)) and factor > 1

    def cuts_lr(self, params: dict[str, Any]) -> bool:
        factor = params.get("factor")
        return isinstance(factor, (int, float)) and factor < 1

    def restarts(self, params: dict[str, Any]) -> bool:
        return self.cuts_lr(params)  # a raise has no damage of the first steps to undo

    def follow_up(self, kept: ActionRecord) -> Proposal | None:
        """The rest of a capped LR change once its first part has been kept.

        A rule may ask for more than one action may do (``estimate`` beyond the capped
        ``factor``: at most two decades at a time). The rest comes in further verified steps,
        each judged against the trend the previous one set, until it is within a factor of 2.
        """
        params = kept.params
        factor = float(params.get("factor", 1.0))
        estimate = float(params.get("estimate", factor))
        rest = estimate / factor
        if not (rest >= FOLLOW_UP_MIN or rest <= 1 / FOLLOW_UP_MIN) or (rest > 1) != (factor > 1):
            return self._continue_raise(kept)
        # No larger a step than the one just kept (which hit the rule's cap).
        capped = min(rest, factor) if factor > 1 else max(rest, factor)
        return Proposal(
            self.name,
            {"factor": round(capped, 6), "estimate": round(rest, 6)},
            reason=f"follow-up: the evidence asked for ×{estimate:.3g}, ×{factor:.3g} was kept",
            cause=kept.evidence.get("cause") or None,
        )

    def _continue_raise(self, kept: ActionRecord) -> Proposal | None:
        """After an LR raise for a cause that made the loss significantly better, a further
        raise by half its decades (√factor), verified like the first: the "bold driver" rule
        (Vogl et al. 1988; Battiti 1989: grow the step while the loss keeps falling), so an LR
        that is decades too low is not left at the one factor the evidence could size. Halving
        the decades each time bounds the overshoot (×10 → ×3.2 → ×1.8: at most ×10^1.75 in
        all); it stops below ×2, at the first raise that is not better (kept, as not worse), or
        at one that is worse (rolled back, which refutes the remedy for the cause)."""
        factor = float(kept.params.get("factor", 1.0))
        cause = kept.evidence.get("cause") or None
        if cause is None or factor < FOLLOW_UP_MIN or not kept.evidence.get("verdict_better"):
            return None
        further = math.sqrt(factor)
        if further < FOLLOW_UP_MIN:
            return None
        return Proposal(
            self.name,
            {"factor": round(further, 6)},
            reason=f"continue: ×{factor:.3g} made the loss better; ×{further:.3g} more",
            cause=cause,
        )
