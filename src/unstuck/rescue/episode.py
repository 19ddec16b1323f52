"""Episode bookkeeping: what was tried on the current plateau, and what the run refuted.

A plateau is an episode: a remedy tried on it (kept, rolled back, skipped) is not proposed
again until a new plateau begins, so a rollback moves the policy to its next rung. A remedy
rolled back for a cause is refuted for that cause for the rest of the run: it hurt (or a cut
did not help), and trying it again on the next plateau would cost the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Episode"]


class Episode:
    """The tried set of the current plateau and the run's refuted (cause, action) pairs."""

    def __init__(self) -> None:
        self.start: int | None = None  # start step of the plateau the tried set belongs to
        self.tried: set[str] = set()  # proposal keys
        self.budget_noted: set[str] = set()  # budget skips already recorded on this plateau
        self.refuted: dict[str, int] = {}  # "cause:action" -> step of the action rolled back

    def begin(self, start: int | None) -> None:
        """A plateau starting at ``start``: a new one clears what was tried."""
        if start != self.start:
            self.start = start
            self.tried = set()
            self.budget_noted = set()

    def refute(self, cause: str | None, action: str, step: int) -> None:
        self.refuted[_key(cause, action)] = step

    def refuted_at(self, cause: str | None, action: str) -> int | None:
        """The step the remedy was rolled back for the cause at, if it was."""
        return self.refuted.get(_key(cause, action))

    def state_dict(self) -> dict[str, Any]:
        return {
            "tried": sorted(self.tried),
            "budget_noted": sorted(self.budget_noted),
            "episode": self.start,
            "refuted": dict(self.refuted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tried = set(state.get("tried", []))
        self.budget_noted = set(state.get("budget_noted", []))
        start = state.get("episode")
        self.start = None if start is None else int(start)
        self.refuted = {str(k): int(v) for k, v in state.get("refuted", {}).items()}


def _key(cause: str | None, action: str) -> str:
    return f"{cause}:{action}"
