"""The one action waiting for its verdict, and how its verdict reads the loss.

The engine keeps at most one: its record, the snapshot a rollback returns to, the loss before
it (what the verdict compares with) and the step it is due. Which loss points the verdict
compares (second halves, a restart's paired steps, a non-finite loss at once) and what the
verdict means for the action (kept, rolled back and why, unverified at the end of a run) are
decided here; the statistics are :func:`unstuck.rescue.verify.judge`'s, the restore the engine's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from unstuck.rescue.base import get_action
from unstuck.rescue.declared import cause_declares, registered_action
from unstuck.rescue.policy import Proposal
from unstuck.rescue.probe import probe_kind
from unstuck.rescue.snapshot import Snapshot, SnapshotStore
from unstuck.rescue.verify import Verdict
from unstuck.types import ActionRecord

__all__ = ["Pending", "before_window", "level", "recent_finite", "record_for"]

PRE_WINDOW = 200  # loss points before the action that the verdict compares against
LEVEL_POINTS = 50  # latest loss points whose mean is "the loss now" (against the last good's)

Loss = tuple[np.ndarray, np.ndarray]


@dataclass
class Pending:
    """An applied action waiting for its verdict."""

    record: ActionRecord
    snapshot: str  # key in the snapshot store
    before_steps: np.ndarray
    before: np.ndarray
    due: int

    @property
    def restarted(self) -> bool:
        """A restart, or a return to a good state from before a rise (a rewind), rewound the
        descent before it, so that descent's projection says nothing about the run after it
        (it would credit the descent with the steps thrown away and skipped since the state
        returned to): its verdict compares levels only."""
        evidence = self.record.evidence
        return "restarted_from_step" in evidence or "restored_last_good_step" in evidence

    def explains(self, cause: str) -> bool:
        """Whether a new finding of ``cause`` may be this action's own effect: the cause
        declares it (``Rule.lr_raise_effect``) and the action may drive the loss up
        (``Action.drives_loss_up``: an LR raised, a restart or a bump running, momentum)."""
        if not cause_declares(cause, "lr_raise_effect"):
            return False
        action = registered_action(self.record.name)
        return action is not None and action.drives_loss_up(self.record.params)

    def broke(self, loss: Loss) -> bool:
        """Whether a loss since the action is non-finite (judged at once, never waited out)."""
        steps, values = loss
        return not bool(np.all(np.isfinite(values[steps > self.record.step])))

    def windows(
        self, step: int, loss: Loss, span: int, broke: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The loss before and after the action that the verdict compares, as
        ``(before steps, before, after steps, after)``: the second half of ``span`` (skip the
        transient); everything since the action when it broke; a restart with the unchanged
        run on record, the same steps from the start on both sides."""
        steps, values = loss
        after = steps >= self.record.step + span // 2
        if broke:
            # A non-finite loss is never waited out: judge (worse) and roll back now, before
            # more steps run on a broken state.
            after = steps > self.record.step
        paired = self.record.evidence.get("restart_compare_steps")
        before_steps, before = self.before_steps, self.before
        if paired is not None and not broke and step - self.record.step >= int(paired):
            # Same steps from the start, second halves: the unchanged run's steps
            # (start + L/2, start + L] against the restart's (action + L/2, action + L].
            first = float(self.record.evidence["restarted_from_step"])
            half, ran = int(paired) // 2, int(paired)
            keep = (before_steps > first + half) & (before_steps <= first + ran)
            before_steps, before = before_steps[keep], before[keep]
            after = (steps > self.record.step + half) & (steps <= self.record.step + ran)
        return before_steps, before, steps[after], values[after]

    def weigh(self, verdict: Verdict, step: int, broke: bool, ending: bool) -> str | None:
        """Record ``verdict`` in the evidence and say what it means: ``None`` keeps the action,
        ``""`` leaves it unverified (the run ends on a verdict that cannot decide), any other
        text is why it is rolled back."""
        record = self.record
        record.evidence.update(
            {
                "verdict_change": verdict.change,
                "verdict_stderr": verdict.stderr,
                "verdict_projected_change": verdict.projected_change,
                "verdict_projected_stderr": verdict.projected_stderr,
                "verdict_log_scale": verdict.log,
                "verdict_rising": verdict.rising,
                "verdict_better": verdict.better,
            }
        )
        record.verified_step = step
        # A cut must earn its keep: its cost comes later (a slower descent, a saddle it can no
        # longer leave — the ReduceLROnPlateau failure of REFERENCE.md §1b), so a cut after
        # which the loss is not significantly better is undone; other actions stay unless worse.
        action = registered_action(record.name)
        cuts = action is not None and action.cuts_lr(record.params)
        idle_cut = cuts and not verdict.better and not ending
        # A verdict that cannot decide (too few points before or after: an infinite standard
        # error) keeps nothing: "not shown worse" is not evidence when nothing could be shown.
        undecided = not verdict.worse and not math.isfinite(verdict.stderr)
        if undecided and ending:
            return ""
        if not (verdict.worse or idle_cut or undecided):
            return None
        if broke:
            return "a non-finite loss"
        if verdict.worse:
            return "worse"
        if idle_cut:
            return "a cut that did not make the loss better"
        return "the verdict could not decide (too few loss points)"

    def state_dict(self, store: SnapshotStore) -> dict[str, Any]:
        return {
            "record": self.record.to_dict(),
            "snapshot": store.get(self.snapshot).to_dict(),
            "before_steps": [float(v) for v in self.before_steps],
            "before": [float(v) for v in self.before],
            "due": self.due,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], store: SnapshotStore) -> Pending:
        pending = cls(
            record=ActionRecord.from_dict(state["record"]),
            snapshot=store.put(Snapshot.from_dict(state["snapshot"])),
            before_steps=np.asarray(state.get("before_steps", []), dtype=np.float64),
            before=np.asarray(state["before"], dtype=np.float64),
            due=int(state["due"]),
        )
        if pending.before_steps.size != pending.before.size:  # saved before steps were kept
            pending.before_steps = np.arange(pending.before.size, dtype=np.float64)
        return pending


def record_for(step: int, proposal: Proposal, outcome: str = "pending") -> ActionRecord:
    """The record an action (or a probe) starts with, labelled for the console."""
    kind = probe_kind(proposal.action)
    if kind is not None and not kind.is_action:
        label = kind.describe(proposal.params)
    else:
        label = get_action(proposal.action).describe(proposal.params)
    return ActionRecord(
        name=proposal.action,
        step=step,
        reason=proposal.reason,
        outcome=outcome,
        params={**proposal.params, "label": label},
        evidence={"cause": proposal.cause or ""},
    )


def before_window(step: int, loss: Loss) -> tuple[np.ndarray, np.ndarray]:
    """The loss points of the ``PRE_WINDOW`` steps up to ``step``: what a verdict compares to."""
    steps, values = loss
    keep = (steps > step - PRE_WINDOW) & (steps <= step)
    return steps[keep].astype(np.float64), values[keep].astype(np.float64)


def recent_finite(loss: Loss) -> bool:
    """Whether the latest loss points are all finite (a probe never starts on a broken state)."""
    values = loss[1][-LEVEL_POINTS:]
    return bool(np.all(np.isfinite(values)))


def level(loss: Loss) -> float:
    """The mean of the latest finite loss points (``inf`` when there are none)."""
    values = loss[1][-LEVEL_POINTS:]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.inf
