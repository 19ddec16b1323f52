"""Scale the gradient-clipping threshold the loop applies through the Guard."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, number
from unstuck.rescue.base import Action, Controls

DEFAULT_FACTOR = 10.0  # ours: one decade up, enough to free steps pinned on a copied max_norm
MIN_FACTOR = 1e-3  # guards against compounding cuts that would zero every update
MAX_FACTOR = 1e6  # past this no realistic gradient is clipped: the clip is off in effect


def _clamp(factor: float) -> float:
    return min(max(factor, MIN_FACTOR), MAX_FACTOR)


class ClipAdjust(Action):
    """Multiply the factor unstuck applies over the ``max_norm`` given to
    ``guard.clip_grad_norm_``.

    A threshold far below the typical gradient norm turns every step into a fixed-length step
    and slows training; one far above it lets spikes through. Only a loop that clips through the
    Guard can be changed: a threshold the user applies with ``torch.nn.utils.clip_grad_norm_``
    is out of reach, so the action then reports itself unavailable.

    >>> ClipAdjust().describe({"factor": 10.0})
    'clip ×10'
    """

    name: ClassVar[str] = "clip_adjust"
    explanation: ClassVar[str] = (
        "Multiplies the gradient-clipping threshold by `factor` (> 1 clips less, < 1 clips "
        "more). A threshold well below the typical gradient norm rescales nearly every update "
        "to the same length, which slows training on a plateau; raising it lets ordinary "
        "gradients through while spikes are still cut. It works only when your loop clips "
        "through guard.clip_grad_norm_(max_norm): unstuck then multiplies your max_norm."
    )
    example_params: ClassVar[dict[str, Any]] = {"factor": DEFAULT_FACTOR}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"factor": -1.0},
        {"factor": "10"},
        {"factr": 10.0},
    )

    def _factor(self, params: dict[str, Any]) -> float:
        check_keys(self.name, params, ("factor",))
        factor = number(self.name, params, "factor", DEFAULT_FACTOR)
        if factor <= 0:
            raise ValueError(f"clip_adjust: 'factor' must be a positive number, got {factor!r}")
        return factor

    def validate(self, params: dict[str, Any]) -> None:
        self._factor(params)

    def unavailable(self, controls: Controls, params: dict[str, Any]) -> str | None:
        if not controls.clip.owned:
            return "clip_adjust needs the loop to clip through guard.clip_grad_norm_(max_norm)"
        before = controls.clip.factor
        if _clamp(before * self._factor(params)) == before:
            return f"clip_adjust: the clip factor is already at its bound ({before:g})"
        return None

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        factor = self._factor(params)
        before = controls.clip.factor
        controls.clip.set(_clamp(before * factor))
        return {"factor_before": before, "factor_after": controls.clip.factor}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.clip.set(float(token["factor_before"]))

    def describe(self, params: dict[str, Any]) -> str:
        return f"clip ×{float(params.get('factor', DEFAULT_FACTOR)):.3g}"
