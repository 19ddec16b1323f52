"""Rewind to the last good state from before a loss spike, and skip the data that caused it."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, integer
from unstuck.rescue.base import Action, Controls


class Rewind(Action):
    """Go back to the newest kept good state from before a confirmed spike or divergence, and
    ask the loop to skip the batches it would otherwise see again.

    The engine does the return itself (``rewinds``): it restores the newest state of its ring
    of good snapshots whose loss is below the loss now and within the detector's least rise of
    the lowest of them, so a state taken inside the spike before it was confirmed is passed
    over. This action then asks a loop that calls ``guard.skip_batch()`` (or, under the
    Lightning and HF callbacks, ``guard.skip_step()``) to skip ``skip`` batches (default: as
    many as the steps rewound, the data between the good state and the confirmation). PaLM
    restarted ~100 steps before a spike and skipped 200–500 batches (Chowdhery et al. 2022,
    §5.1). A repeated spike is not rewound again on the same episode:
    the ladder escalates to an LR cut, then to tighter clipping.

    >>> Rewind().describe({"skip": 120})
    'rewind, skip 120'
    """

    name: ClassVar[str] = "rewind"
    explanation: ClassVar[str] = (
        "Returns the model, optimizer, scheduler and RNG state to the newest good snapshot "
        "from before a loss spike or divergence (unstuck keeps a small ring of them), then asks "
        "your loop to skip the next `skip` batches (default: as many as the steps rewound), "
        "so the run moves past the data that caused the spike. The loop skips a batch when "
        "guard.skip_batch() returns True; the Lightning and Hugging Face callbacks skip on their "
        "own (they drop the step's gradients before optimizer.step()); a loop that does not "
        "ask still gets the rewind. "
        "PaLM restarted about 100 steps before each spike and skipped 200-500 batches."
    )
    rewinds: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {"skip": 100}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"skip": -1},
        {"skip": 2.5},
        {"skips": 10},
    )

    def _skip(self, params: dict[str, Any]) -> int:
        check_keys(self.name, params, ("skip",))
        return integer(self.name, params, "skip", 0, minimum=0)

    def validate(self, params: dict[str, Any]) -> None:
        self._skip(params)

    def after_rewind(self, params: dict[str, Any], steps: int) -> dict[str, Any]:
        """Skip as many batches as the steps rewound unless ``skip`` was given."""
        return params if "skip" in params else {**params, "skip": max(int(steps), 0)}

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        skip = self._skip(params)
        before = controls.skip.remaining
        if controls.skip.owned:
            controls.skip.set(skip)
        return {
            "skip_before": before,
            "skip_batches": controls.skip.remaining,
            "skip_owned": controls.skip.owned,
        }

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.skip.set(int(token["skip_before"]))

    def describe(self, params: dict[str, Any]) -> str:
        return f"rewind, skip {int(params.get('skip', 0))}"
