"""Go back to the best-validation weights and ask the loop to stop."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, integer
from unstuck.rescue.base import Action, Controls
from unstuck.rescue.snapshot import Snapshot, restore_snapshot, take_snapshot


class KeepBestAndStop(Action):
    """Restore the Guard's best-validation snapshot (when there is one) and request a stop.

    For ``converged`` and ``overfitting``: more steps at this point either buy nothing or make
    the validation loss worse, so the useful move is early stopping with the best weights
    (Prechelt 1998). Without a best snapshot the action still stops — the current weights are
    then what the user keeps. The loop sees the request as ``guard.should_stop``.

    >>> KeepBestAndStop().describe({})
    'keep best & stop'
    """

    name: ClassVar[str] = "keep_best_and_stop"
    explanation: ClassVar[str] = (
        "Puts back the weights (and optimizer, scheduler and RNG state) from the step with the "
        "lowest validation loss, then asks your loop to stop through guard.should_stop. When "
        "the run has converged, or the validation loss has been rising while the training loss "
        "falls (overfitting), further steps buy nothing or make the model worse; early stopping "
        "keeps the best model seen (Prechelt 1998). Without validation losses there is no best "
        "snapshot, and the action only asks to stop."
    )
    final: ClassVar[bool] = True  # a stop is the end of the rescue: recorded, never rolled back
    # ``best_step`` is informational: the overfitting rule passes the step it found the minimum
    # at; the snapshot restored is the Guard's own best.
    example_params: ClassVar[dict[str, Any]] = {}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = ({"best_step": -1}, {"steps": 3})

    def validate(self, params: dict[str, Any]) -> None:
        check_keys(self.name, params, ("best_step",))
        if "best_step" in params:
            integer(self.name, params, "best_step", 0, minimum=0)

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        self.validate(params)
        stop_before = controls.stop.state_dict()
        handles_before = {
            "lr": controls.lr.state_dict(),
            "clip": controls.clip.state_dict(),
            "accumulation": controls.accumulation.state_dict(),
        }
        best = controls.best()
        before: dict[str, Any] | None = None
        if best is not None and controls.restore is not None:
            # Only a restore changes the weights; without one a copy would cost memory for nothing.
            before = take_snapshot(
                -1, controls.model, controls.optimizer, controls.scheduler, controls.scaler
            ).to_dict()
            controls.restore(best)
            reason = f"restored the best-validation state of step {best.step}"
        else:
            reason = "no best-validation snapshot to restore; kept the current weights"
        controls.stop.request(f"keep_best_and_stop: {reason}")  # after restore, which may reset it
        return {
            "before": before,
            "handles_before": handles_before,
            "stop_before": stop_before,
            "restored": before is not None,
        }

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        if token["before"] is not None:
            # Not ``controls.restore``: ``before`` was taken without the Guard's own state (an
            # action has no handle to capture it), and the Guard's restore expects that state.
            restore_snapshot(
                Snapshot.from_dict(token["before"]),
                controls.model,
                controls.optimizer,
                controls.scheduler,
                controls.scaler,
            )
        # The best snapshot's restore also rewound unstuck's own handles; put them back too.
        handles = token["handles_before"]
        controls.lr.load_state_dict(handles["lr"])
        controls.clip.load_state_dict(handles["clip"])
        controls.accumulation.load_state_dict(handles["accumulation"])
        controls.stop.load_state_dict(token["stop_before"])

    def describe(self, params: dict[str, Any]) -> str:
        return "keep best & stop"
