"""Ramp the learning rate up linearly from near zero: the warm-up the run started without."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, integer
from unstuck.rescue.base import Action, Controls
from unstuck.signals.architecture import untuned_warmup_length

# Ma & Yarats 2021 ("On the adequacy of untuned warmup for adaptive optimization"): a linear
# warm-up over 2·(1 − β₂)⁻¹ steps; with Adam's default β₂ = 0.999 that is 2,000 steps.
DEFAULT_LENGTH = untuned_warmup_length(None)


class Warmup(Action):
    """Run the LR from ``1/length`` of its value up to all of it over ``length`` steps.

    Goyal et al. 2017's gradual warm-up: at step ``k`` of the ramp the optimizer steps with
    ``schedule(t) × value × (k + 1) / length``. The ramp runs on unstuck's multiplier, so the
    user's scheduler keeps running underneath and nothing jumps when the ramp ends. The engine
    applies it from the run's first state when the warm-up was missing from the start (see
    ``missing_warmup``): the first full-size Adam steps are what did the damage.

    >>> Warmup().describe({"length": 2000})
    'linear warm-up over 2000 steps'
    """

    name: ClassVar[str] = "warmup"
    changes_lr: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Ramps the effective learning rate linearly from 1/`length` of its value up to all of "
        "it over `length` optimizer steps (gradual warm-up, Goyal et al. 2017). An adaptive "
        "optimizer's first steps are about lr per weight whatever the gradient, while its "
        "second-moment estimate is still a few samples (Liu et al. 2020); a warm-up keeps "
        "those steps small until the estimate settles. The default length is Ma & Yarats' "
        "(2021) untuned 2/(1 − β₂) steps. Your own LR schedule keeps running underneath as a "
        "product."
    )
    example_params: ClassVar[dict[str, Any]] = {"length": DEFAULT_LENGTH}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"length": 1},
        {"length": 100.0},
        {"steps": 100},
    )

    def _length(self, params: dict[str, Any]) -> int:
        check_keys(self.name, params, ("length",))
        return integer(self.name, params, "length", DEFAULT_LENGTH, minimum=2)

    def validate(self, params: dict[str, Any]) -> None:
        self._length(params)

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        length = self._length(params)
        before = controls.lr.state_dict()
        controls.lr.set_shape("linear", start=1.0 / length, end=1.0, length=length)
        return {"lr_before": before}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.lr.load_state_dict(token["lr_before"])

    def describe(self, params: dict[str, Any]) -> str:
        return f"linear warm-up over {int(params.get('length', DEFAULT_LENGTH))} steps"
