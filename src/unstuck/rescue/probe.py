"""The probe interface: work that spans several of the user's steps, measured, then undone.

A probe starts from a snapshot the engine took (and owns), runs on the user's next steps, and
is fed their losses at each flush (:meth:`Probe.advance`). When it is ``done`` the run is back
in a state the probe chose (its start, or a winner it kept), ``spent`` says how many steps it
cost against the probe budget, and ``follow`` what the engine should apply next, verified like
any action, from the restored state. The engine holds at most one probe, in one slot, and knows
none by name: each kind declares what the engine asks before it starts (its budget, its label,
whether it is a registered action whose checks and ``apply`` run first).

The kinds are the LR range test (:mod:`unstuck.rescue.range_test`) and the branch trial
(:mod:`unstuck.rescue.branches`), one file each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from unstuck.types import ActionRecord, EngineEvent

if TYPE_CHECKING:
    from unstuck.rescue.base import Controls
    from unstuck.rescue.policy import Proposal
    from unstuck.rescue.snapshot import Snapshot, SnapshotStore

__all__ = ["Event", "Probe", "ProbeHost", "is_probe", "probe_kind", "probe_kinds"]

Event = EngineEvent  # what the engine and its probes emit (unstuck.types)


class ProbeHost(Protocol):
    """What a probe may use of the engine: the handles, the store, a capture and a restore."""

    controls: Controls
    snapshots: SnapshotStore
    evaluate: Callable[[], list[float] | None]  # the kept probe batches' losses, if any

    def capture(self, step: int) -> Snapshot: ...

    def restore(self, snap: Snapshot) -> None: ...


class Probe:
    """Base of the probe kinds. A subclass sets ``name`` and implements the methods below."""

    name: ClassVar[str]
    # A registered action (its validate/unavailable checks and apply run before the probe
    # starts, and it describes itself), or a probe that is no action of its own.
    is_action: ClassVar[bool] = True
    # Once done (or failed), the engine waits its cooldown before the next action.
    rests: ClassVar[bool] = False

    record: ActionRecord  # outcome "probing" while it runs
    snapshot: str  # the state it started from (a key in the store; the engine owns it)
    done: bool = False
    spent: int = 0  # steps charged to the probe budget once done
    nonfinite: int = 0  # of its steps, those whose loss was non-finite
    follow: Proposal | None = None  # once done: applied next and verified, from the restored state
    follow_evidence: dict[str, Any]  # what the follow-up's record adds to its evidence
    before: tuple[np.ndarray, np.ndarray]  # the loss the follow-up's verdict compares with

    @classmethod
    def over_budget(
        cls, allowance: int, step: int, share: float, params: dict[str, Any], horizon: int
    ) -> str | None:
        """Why the probe cannot start with ``allowance`` probe steps left (``None``: it can);
        the reason starts with ``probe budget`` (the engine waits for the budget to grow)."""
        raise NotImplementedError

    @classmethod
    def fit_params(cls, params: dict[str, Any], allowance: int) -> dict[str, Any]:
        """``params`` fitted to the probe steps left (a shorter sweep)."""
        return dict(params)

    @classmethod
    def describe(cls, params: dict[str, Any]) -> str:
        """A short label (a probe that is an action describes itself through the action)."""
        return cls.name

    @classmethod
    def start(
        cls,
        host: ProbeHost,
        step: int,
        snapshot: str,
        proposal: Proposal,
        record: ActionRecord | None,
        before: tuple[np.ndarray, np.ndarray],
        horizon: int,
    ) -> Probe:
        """Begin at ``step`` from ``snapshot``. ``record``: the action's record when the probe
        is an action (already applied); a probe of its own makes and applies its own."""
        raise NotImplementedError

    def flush_hint(self, step: int) -> int | None:
        """Steps until the probe wants the next flush; ``None``: every read the engine allows."""
        raise NotImplementedError

    def advance(self, step: int, steps: np.ndarray, values: np.ndarray) -> list[Event]:
        """Take the losses since the last flush; may finish (``done``). A restore that does not
        fit the live objects raises ``SnapshotMismatchError``: the engine abandons the probe."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the snapshots of its own (not ``snapshot``, which the engine owns)."""

    def end(self, step: int, outcome: str, failed_because: str | None = None) -> Event:
        """Close the probe's record with ``outcome`` (interrupted, failed) at ``step``."""
        self.record.outcome = outcome
        if failed_because is not None:
            self.record.evidence["failed_because"] = failed_because
        self.record.verified_step = step
        return EngineEvent.outcome(self.record)

    def abandon(self, step: int, reason: str) -> Event:
        """End here, ``failed`` for ``reason`` (its start no longer fits the run): every step
        since it began is charged to the budget, as measuring that found nothing."""
        self.done, self.spent = True, max(step - self.record.step, 0)
        return self.end(step, "failed", reason)

    def state_dict(self, store: SnapshotStore) -> dict[str, Any]:
        """The record and the start state: a resumed run restores it (the probe is undone)."""
        return {"record": self.record.to_dict(), "snapshot": store.get(self.snapshot).to_dict()}


def probe_kinds() -> dict[str, type[Probe]]:
    """Every probe kind by the name a proposal uses for it."""
    from unstuck.rescue.branches import BranchTrial
    from unstuck.rescue.range_test import RangeTest

    return {kind.name: kind for kind in (RangeTest, BranchTrial)}


def probe_kind(name: str) -> type[Probe] | None:
    """The probe kind a proposal named ``name`` starts, or ``None`` for an ordinary action."""
    return probe_kinds().get(name)


def is_probe(name: str) -> bool:
    """Whether a proposal named ``name`` is a measurement (a probe), not a change."""
    return name in probe_kinds()
