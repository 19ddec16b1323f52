"""The rescue engine: snapshot, apply, verify after a horizon, keep or roll back.

Every action is preceded by a full snapshot (model, optimizer, scheduler, scaler, RNG and the
Guard's own state). After ``horizon`` steps the loss since the action is compared with the loss
before it (:mod:`unstuck.rescue.verify`); if it is significantly worse, the snapshot is
restored, the action is marked ``rolled_back`` and not tried again on this plateau.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from unstuck.rescue.base import Controls, get_action
from unstuck.rescue.policy import Policy, Proposal
from unstuck.rescue.snapshot import Snapshot, restore_snapshot, take_snapshot
from unstuck.rescue.verify import compare_windows
from unstuck.types import ActionRecord, Finding

__all__ = ["RescueEngine"]

logger = logging.getLogger("unstuck")

DEFAULT_HORIZON = 200  # steps an action runs before it is judged
DEFAULT_COOLDOWN = 100  # steps after a verdict before the next action
PRE_WINDOW = 200  # loss points before the action that the verdict compares against


@dataclass
class _Pending:
    record: ActionRecord
    snapshot: Snapshot
    token: dict[str, Any]
    before: np.ndarray
    due: int


class RescueEngine:
    """Applies what the policy proposes, one action at a time, and judges each one."""

    def __init__(
        self,
        controls: Controls,
        policy: Policy,
        *,
        horizon: int = DEFAULT_HORIZON,
        cooldown: int = DEFAULT_COOLDOWN,
        capture_extra: Callable[[], dict[str, Any]] | None = None,
        restore_extra: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if horizon < 1 or cooldown < 0:
            raise ValueError(f"horizon must be >= 1 and cooldown >= 0, got {horizon}, {cooldown}")
        self.controls = controls
        self.policy = policy
        self.horizon = horizon
        self.cooldown = cooldown
        self._capture_extra = capture_extra or dict
        self._restore_extra = restore_extra or (lambda extra: None)
        self.pending: _Pending | None = None
        self.quiet_until = 0
        self.tried: set[str] = set()
        self.episode: int | None = None  # start step of the plateau the tried set belongs to

    def new_episode(self, start: int | None) -> None:
        """A new plateau began: remedies rolled back on the last one may be tried again."""
        if start != self.episode:
            self.episode = start
            self.tried = set()

    def maybe_act(
        self,
        step: int,
        state: str,
        findings: Sequence[Finding],
        loss: tuple[np.ndarray, np.ndarray],
        plateau_kind: str | None = None,
    ) -> ActionRecord | None:
        """Ask the policy and, if it proposes something, snapshot and apply it."""
        if not self.policy.acts or self.pending is not None or step < self.quiet_until:
            return None
        proposal = self.policy.propose(
            step=step,
            state=state,
            findings=findings,
            tried=frozenset(self.tried),
            plateau_kind=plateau_kind,
        )
        if proposal is None:
            return None
        return self._apply(step, proposal, loss)

    def _apply(
        self, step: int, proposal: Proposal, loss: tuple[np.ndarray, np.ndarray]
    ) -> ActionRecord | None:
        action = get_action(proposal.action)
        action.validate(proposal.params)
        c = self.controls
        snapshot = take_snapshot(
            step, c.model, c.optimizer, c.scheduler, c.scaler, extra=self._capture_extra()
        )
        token = action.apply(c, dict(proposal.params))
        record = ActionRecord(
            name=proposal.action,
            step=step,
            reason=proposal.reason,
            params={**proposal.params, "label": action.describe(proposal.params)},
            evidence={"cause": proposal.cause or "", **token},
        )
        self.tried.add(proposal.key)
        steps, values = loss
        before = values[steps > step - PRE_WINDOW] if steps.size else values
        self.pending = _Pending(record, snapshot, token, before, step + self.horizon)
        return record

    def verify(self, step: int, loss: tuple[np.ndarray, np.ndarray]) -> ActionRecord | None:
        """Judge the pending action once its horizon has passed; roll back if it hurt."""
        p = self.pending
        if p is None or step < p.due:
            return None
        steps, values = loss
        start = p.record.step + self.horizon // 2  # judge the second half: skip the transient
        verdict = compare_windows(p.before, values[steps >= start])
        p.record.evidence.update(
            {
                "verdict_change": verdict.change,
                "verdict_stderr": verdict.stderr,
                "verdict_log_scale": verdict.log,
            }
        )
        p.record.verified_step = step
        if verdict.worse:
            c = self.controls
            restore_snapshot(p.snapshot, c.model, c.optimizer, c.scheduler, c.scaler)
            self._restore_extra(p.snapshot.extra)
            p.record.outcome = "rolled_back"
        else:
            p.record.outcome = "kept"
        self.pending = None
        self.quiet_until = step + self.cooldown
        return p.record

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only; includes the pending action and its snapshot, so a
        resumed run verifies (and can roll back) an action taken before the checkpoint."""
        p = self.pending
        pending = None
        if p is not None:
            pending = {
                "record": p.record.to_dict(),
                "snapshot": {f.name: getattr(p.snapshot, f.name) for f in fields(Snapshot)},
                "token": dict(p.token),
                "before": [float(v) for v in p.before],
                "due": p.due,
            }
        return {
            "quiet_until": self.quiet_until,
            "tried": sorted(self.tried),
            "episode": self.episode,
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.quiet_until = int(state.get("quiet_until", 0))
        self.tried = set(state.get("tried", []))
        episode = state.get("episode")
        self.episode = None if episode is None else int(episode)
        pending = state.get("pending")
        self.pending = None
        if pending is not None:
            self.pending = _Pending(
                record=ActionRecord.from_dict(pending["record"]),
                snapshot=Snapshot(**pending["snapshot"]),
                token=dict(pending["token"]),
                before=np.asarray(pending["before"], dtype=np.float64),
                due=int(pending["due"]),
            )
