"""Raise the learning rate and let it decay back along a cosine: a warm restart (SGDR)."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, integer, number
from unstuck.rescue.base import Action, Controls

DEFAULT_PEAK = 3.0  # the restart's LR over the current one; SGDR restarts to the schedule's max
DEFAULT_END = 0.3  # where the cosine settles, relative to the LR before the restart
DEFAULT_LENGTH = 200  # optimizer steps; the engine's default horizon, so one verification fits


class WarmRestart(Action):
    """Jump the LR to ``peak`` × its current value and anneal it to ``end`` × along a cosine.

    Loshchilov & Hutter 2017 (SGDR): a restart's large steps leave the current basin, and the
    cosine decay that follows settles into a new one. The decay runs on unstuck's multiplier, so
    the user's scheduler keeps running underneath: at step ``k`` of the restart the optimizer
    steps with ``schedule(t) × old × cosine(k)``; after ``length`` steps the factor stays at
    ``old × end``.

    >>> WarmRestart().describe({"peak": 3.0, "end": 0.3, "length": 200})
    'warm restart ×3 → ×0.3 over 200 steps'
    """

    name: ClassVar[str] = "warm_restart"
    changes_lr: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Raises the effective learning rate to `peak` times its current value and lets it fall "
        "back along half a cosine to `end` times the old value over `length` optimizer steps "
        "(SGDR, Loshchilov & Hutter 2017). The large steps at the start can carry the weights "
        "out of a flat region or a poor basin, and the decay that follows lets them settle "
        "somewhere lower; your own LR schedule keeps running underneath as a product."
    )
    example_params: ClassVar[dict[str, Any]] = {
        "peak": DEFAULT_PEAK,
        "end": DEFAULT_END,
        "length": DEFAULT_LENGTH,
    }
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"peak": 1.0},
        {"end": 5.0},
        {"length": 1},
        {"length": 2.5},
    )

    def _params(self, params: dict[str, Any]) -> tuple[float, float, int]:
        check_keys(self.name, params, ("peak", "end", "length"))
        peak = number(self.name, params, "peak", DEFAULT_PEAK)
        if peak <= 1.0:
            raise ValueError(f"warm_restart: 'peak' must be > 1 (a restart raises), got {peak!r}")
        end = number(self.name, params, "end", DEFAULT_END)
        if not 0.0 < end < peak:
            raise ValueError(f"warm_restart: 'end' must lie in (0, peak={peak:g}), got {end!r}")
        length = integer(self.name, params, "length", DEFAULT_LENGTH, minimum=2)
        return peak, end, length

    def validate(self, params: dict[str, Any]) -> None:
        self._params(params)

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        peak, end, length = self._params(params)
        lr = controls.lr
        before = lr.state_dict()
        # The steady value becomes the settled LR and the shape rides on it from peak/end down
        # to 1, so when the shape finishes (and is dropped) nothing jumps.
        lr.set(lr.value * end)
        lr.set_shape("cosine", start=peak / end, end=1.0, length=length)
        return {"lr_before": before}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.lr.load_state_dict(token["lr_before"])

    def describe(self, params: dict[str, Any]) -> str:
        peak = float(params.get("peak", DEFAULT_PEAK))
        end = float(params.get("end", DEFAULT_END))
        length = int(params.get("length", DEFAULT_LENGTH))
        return f"warm restart ×{peak:.3g} → ×{end:.3g} over {length} steps"

    def duration(self, params: dict[str, Any]) -> int:
        return int(params.get("length", DEFAULT_LENGTH))

    def drives_loss_up(self, params: dict[str, Any]) -> bool:
        return True  # its peak can drive the loss up for a while: that is the restart
