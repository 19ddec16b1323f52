"""The handles the Guard lends to actions, besides the LR multiplier.

Each is a small object with primitives-only ``state_dict``/``load_state_dict``, so snapshots
and the Guard's checkpoint carry them. A handle that the user's loop does not route through
unstuck stays *unowned*: actions that need it report themselves unavailable instead of
pretending (changing a clip threshold the user applies themselves would do nothing).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["AccumulationControl", "ClipControl", "SkipControl", "StopControl"]


class ClipControl:
    """A factor over the ``max_norm`` the user passes to ``guard.clip_grad_norm_``.

    ``owned`` turns true at the first ``guard.clip_grad_norm_`` call: only then does changing
    the factor change the run.
    """

    def __init__(self) -> None:
        self.factor = 1.0
        self.owned = False

    def set(self, factor: float) -> None:
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"clip factor must be a positive finite number, got {factor!r}")
        self.factor = float(factor)

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "owned": self.owned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set(float(state.get("factor", 1.0)))
        self.owned = bool(state.get("owned", self.owned))


class AccumulationControl:
    """How many ``guard.step`` calls make one optimizer step, when unstuck owns accumulation.

    Owned only when the Guard was built with ``accumulation_steps=k`` and the loop asks
    ``guard.should_step()`` before ``optimizer.step()``; the Guard then averages the summed
    gradients itself (the user does not divide the loss by ``k``), so the step count can change
    without the user's loop knowing.
    """

    def __init__(self, steps: int | None = None) -> None:
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"accumulation_steps must be a positive int, got {steps!r}")
        self.owned = steps is not None
        self.steps = steps or 1
        self.pending = 0  # micro-batches accumulated since the last optimizer step

    def set(self, steps: int) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"accumulation steps must be a positive int, got {steps!r}")
        self.steps = steps

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "owned": self.owned, "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set(int(state.get("steps", 1)))
        self.owned = bool(state.get("owned", self.owned))
        self.pending = int(state.get("pending", 0))


class StopControl:
    """A request to end training, read by the user's loop as ``guard.should_stop``."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""

    def request(self, reason: str) -> None:
        self.requested = True
        self.reason = reason

    def clear(self) -> None:
        self.requested = False
        self.reason = ""

    def state_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.requested = bool(state.get("requested", False))
        self.reason = str(state.get("reason", ""))


class SkipControl:
    """Batches the loop is asked to skip after a rewind, so it moves past the data that caused
    a loss spike (PaLM skipped the 200–500 batches before one and restarted ~100 steps before
    it).

    ``owned`` turns true at the first ``guard.skip_batch()`` call: only a loop that asks can be
    told to skip; without it a rewind still returns to the state before the spike.
    """

    def __init__(self) -> None:
        self.remaining = 0
        self.owned = False

    def set(self, batches: int) -> None:
        if not isinstance(batches, int) or batches < 0:
            raise ValueError(f"batches to skip must be an int >= 0, got {batches!r}")
        self.remaining = batches

    def take(self) -> bool:
        """One batch: whether the loop should skip it (and count it skipped)."""
        self.owned = True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "owned": self.owned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set(int(state.get("remaining", 0)))
        self.owned = bool(state.get("owned", self.owned))
