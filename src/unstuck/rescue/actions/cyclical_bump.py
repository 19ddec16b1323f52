"""One triangular learning-rate cycle up to a peak and back (cyclical learning rates)."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, integer, number
from unstuck.rescue.base import Action, Controls

DEFAULT_PEAK = 4.0  # Smith 2017 cycles between bounds 3–4× apart
DEFAULT_LENGTH = 200  # optimizer steps; the engine's default horizon, so one verification fits


class CyclicalBump(Action):
    """Raise the LR linearly to ``peak`` × at mid-cycle and lower it back over ``length`` steps.

    Smith 2017 (cyclical learning rates): a temporary rise helps cross saddle points and flat
    stretches, and unlike a warm restart the LR ends exactly where it was, so the bump changes
    nothing lasting but the weights.

    >>> CyclicalBump().describe({"peak": 4.0, "length": 200})
    'lr bump ×4 over 200 steps'
    """

    name: ClassVar[str] = "cyclical_bump"
    changes_lr: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Runs one triangular learning-rate cycle: the effective LR rises linearly to `peak` "
        "times its current value at the middle of `length` optimizer steps and falls back to "
        "exactly where it was (cyclical learning rates, Smith 2017). The temporary larger steps "
        "help the weights cross a saddle point or a flat stretch; afterwards your LR is "
        "unchanged, so the bump leaves nothing behind but the progress it made."
    )
    example_params: ClassVar[dict[str, Any]] = {"peak": DEFAULT_PEAK, "length": DEFAULT_LENGTH}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = ({"peak": 0.5}, {"length": 0})

    def _params(self, params: dict[str, Any]) -> tuple[float, int]:
        check_keys(self.name, params, ("peak", "length"))
        peak = number(self.name, params, "peak", DEFAULT_PEAK)
        if peak <= 1.0:
            raise ValueError(f"cyclical_bump: 'peak' must be > 1 (a bump raises), got {peak!r}")
        return peak, integer(self.name, params, "length", DEFAULT_LENGTH, minimum=2)

    def validate(self, params: dict[str, Any]) -> None:
        self._params(params)

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        peak, length = self._params(params)
        before = controls.lr.state_dict()
        # ``value`` stays: the triangle is a factor on it that starts and ends at 1.
        controls.lr.set_shape("triangle", start=peak, end=1.0, length=length)
        return {"lr_before": before}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.lr.load_state_dict(token["lr_before"])

    def describe(self, params: dict[str, Any]) -> str:
        peak = float(params.get("peak", DEFAULT_PEAK))
        return f"lr bump ×{peak:.3g} over {int(params.get('length', DEFAULT_LENGTH))} steps"

    def duration(self, params: dict[str, Any]) -> int:
        return int(params.get("length", DEFAULT_LENGTH))

    def drives_loss_up(self, params: dict[str, Any]) -> bool:
        return True  # the bump can drive the loss up for a while: that is the bump
