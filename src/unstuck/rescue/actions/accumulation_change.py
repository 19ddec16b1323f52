"""Change how many micro-batches the Guard accumulates into one optimizer step."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, number
from unstuck.rescue.base import Action, Controls

DEFAULT_FACTOR = 2.0  # one doubling of the effective batch per action
MAX_STEPS = 1024  # ours: beyond this an optimizer step would wait on thousands of batches


def _new_steps(steps: int, factor: float) -> int:
    """``steps × factor`` rounded half up (not to even: 2.5 → 3) and kept in [1, MAX_STEPS]."""
    return min(max(math.floor(steps * factor + 0.5), 1), MAX_STEPS)


class AccumulationChange(Action):
    """Multiply the Guard's accumulation steps by ``factor`` (> 1 a larger effective batch).

    McCandlish et al. 2018: below the critical batch size, gradient noise limits progress, and a
    larger batch — here more micro-batches per optimizer step — buys a cleaner gradient at the
    same memory. Works only when the Guard owns accumulation (it averages the gradients, so the
    user's loop need not know the count).

    >>> AccumulationChange().describe({"factor": 2})
    'accumulation ×2'
    """

    name: ClassVar[str] = "accumulation_change"
    explanation: ClassVar[str] = (
        "Multiplies the number of micro-batches accumulated into each optimizer step by "
        "`factor`, so the effective batch grows (factor > 1) or shrinks (< 1) without using "
        "more memory. A larger batch averages out gradient noise, which is what stalls a run "
        "whose batch is below the critical batch size (McCandlish et al. 2018); there are fewer "
        "optimizer steps per epoch in exchange. It works only when the Guard owns accumulation: "
        "Guard(accumulation_steps=k) and a loop that asks guard.should_step() before "
        "optimizer.step()."
    )
    example_params: ClassVar[dict[str, Any]] = {"factor": DEFAULT_FACTOR}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"factor": 1.0},
        {"factor": 0.0},
        {"factor": True},
    )

    def _factor(self, params: dict[str, Any]) -> float:
        check_keys(self.name, params, ("factor",))
        factor = number(self.name, params, "factor", DEFAULT_FACTOR)
        if factor <= 0 or factor == 1.0:
            raise ValueError(
                f"accumulation_change: 'factor' must be a positive number other than 1, "
                f"got {factor!r}"
            )
        return factor

    def validate(self, params: dict[str, Any]) -> None:
        self._factor(params)

    def unavailable(self, controls: Controls, params: dict[str, Any]) -> str | None:
        acc = controls.accumulation
        if not acc.owned:
            return (
                "accumulation_change needs Guard(accumulation_steps=k) and a loop that asks "
                "guard.should_step() before optimizer.step()"
            )
        if _new_steps(acc.steps, self._factor(params)) == acc.steps:
            return (
                f"accumulation_change: {acc.steps} micro-batches × {self._factor(params):g} "
                "rounds to no change"
            )
        return None

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        factor = self._factor(params)
        acc = controls.accumulation
        before = acc.steps
        acc.set(_new_steps(before, factor))
        return {"steps_before": before, "steps_after": acc.steps}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.accumulation.set(int(token["steps_before"]))

    def describe(self, params: dict[str, Any]) -> str:
        return f"accumulation ×{float(params.get('factor', DEFAULT_FACTOR)):.3g}"
