"""The rescue engine: snapshot, apply, verify after a horizon, keep or roll back; run probes.

Every action is preceded by a full snapshot (model, optimizer, scheduler, scaler, RNG and the
Guard's own state). After ``max(horizon, duration)`` steps the loss since the action is judged
against the loss before it (:func:`unstuck.rescue.verify.judge`); if it is significantly worse,
the snapshot is restored, the action is marked ``rolled_back`` and the policy's next rung is
tried. Kept actions are followed by a cooldown, or by the action's own next step
(:meth:`~unstuck.rescue.base.Action.follow_up`: a capped LR change finishing its move).

A **probe** (:mod:`unstuck.rescue.probe`: the LR range test, a branch trial) spans several of the
user's steps, during which detection and diagnosis pause; it then restores a state of its
choosing and may hand the engine a follow-up, applied and verified like any action. Probe steps
are real training steps spent measuring, so they are budgeted: at most ``probe_budget``
(default 10 %) of the steps so far.

The engine names no action or cause: what it reads about them is declared on the action
(``probe``, ``final``, ``cuts_lr``, ``drives_loss_up``, ``restarts``, ``follow_up``) and on the
cause's rule (``lr_raise_effect``, ``broken_state``, ``restart_remedies``). Its kept states
(best, last good, first) are named slots of a :class:`~unstuck.rescue.snapshot_book.SnapshotBook`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unstuck.diagnose.base import Rule, all_rules
from unstuck.rescue.base import Action, Controls, all_actions, get_action
from unstuck.rescue.branches import BranchTrial
from unstuck.rescue.policy import Policy, Proposal
from unstuck.rescue.probe import Event, Probe, is_probe, probe_kind
from unstuck.rescue.range_test import RangeTest
from unstuck.rescue.snapshot import (
    Snapshot,
    SnapshotMismatchError,
    SnapshotStore,
    restore_snapshot,
    take_snapshot,
)
from unstuck.rescue.snapshot_book import Slot, SnapshotBook
from unstuck.rescue.verify import judge
from unstuck.types import ActionRecord, Finding, Plateau

__all__ = ["RescueEngine", "merge_action_events"]

logger = logging.getLogger("unstuck")

DEFAULT_HORIZON = 200  # steps an action runs before it is judged
DEFAULT_COOLDOWN = 100  # steps after a kept action before the next one
DEFAULT_PROBE_BUDGET = 0.1  # probe steps may be at most this share of the steps so far
DEFAULT_SNAPSHOT_MEMORY = 1 << 30  # bytes of snapshots held in memory before spilling to disk
PRE_WINDOW = 200  # loss points before the action that the verdict compares against
PROBE_FLUSH = 1  # a probe that reads every step (the range test) stops before a blow-up
LAST_GOOD_EVERY = 500  # steps between refreshes of the last-good snapshot on healthy flushes
LEVEL_POINTS = 50  # latest loss points whose mean is "the loss now" (against the last good's)
HEALTHY_STATES = frozenset({"improving", "slow", "hidden_progress", "plateau"})
PROPOSALS_PER_DECISION = 8  # unavailable proposals skipped before giving up this flush
MIN_RESTART_COMPARE = 20  # a restarted cut with this many original steps is judged against them
# The snapshot book's slots: the best validation state, the last good state, the first state.
BEST, LAST_GOOD, START = "best", "last_good", "start"

_CONTROL_HANDLES = ("lr", "clip", "accumulation", "stop")


@dataclass
class _Pending:
    record: ActionRecord
    snapshot: str  # key in the snapshot store
    before_steps: np.ndarray
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
        probe_budget: float = DEFAULT_PROBE_BUDGET,
        snapshot_memory: int = DEFAULT_SNAPSHOT_MEMORY,
        spill_dir: Any = None,
        capture_extra: Callable[[], dict[str, Any]] | None = None,
        restore_extra: Callable[[dict[str, Any]], None] | None = None,
        evaluate: Callable[[], list[float] | None] | None = None,
    ) -> None:
        if horizon < 1 or cooldown < 0:
            raise ValueError(f"horizon must be >= 1 and cooldown >= 0, got {horizon}, {cooldown}")
        if not (isinstance(probe_budget, (int, float)) and 0 <= probe_budget <= 1):
            raise ValueError(f"probe_budget must be a share in [0, 1], got {probe_budget!r}")
        self.controls = controls
        self.policy = policy
        self.horizon = horizon
        self.cooldown = cooldown
        self.probe_budget = float(probe_budget)
        self.snapshots = SnapshotStore(snapshot_memory, spill_dir)
        # The last good state's step starts one refresh back, so the first healthy flush keeps it.
        self.book = SnapshotBook(
            self.snapshots, {BEST: Slot(), LAST_GOOD: Slot(step=-LAST_GOOD_EVERY), START: Slot()}
        )
        self._capture_extra = capture_extra or dict
        self._restore_extra = restore_extra or (lambda extra: None)
        self.evaluate = evaluate or (lambda: None)
        controls.restore = self.restore
        controls.best = self.best_snapshot
        self.pending: _Pending | None = None
        self.probe: Probe | None = None  # the one probe running, if any
        self.quiet_until = 0
        self.tried: set[str] = set()
        self._budget_noted: set[str] = set()  # budget skips already recorded on this plateau
        self.episode: int | None = None  # start step of the plateau the tried set belongs to
        self.probe_steps = 0  # steps spent measuring so far (range tests, losing branches)
        self.probe_nonfinite = 0  # probe steps whose loss was non-finite (the goal: none)
        # (cause, action) pairs whose verdict rolled them back, and the step: a remedy that hurt
        # (or a cut that did not help) for a cause is not tried for it again in this run.
        self.refuted: dict[str, int] = {}
        self._mismatch_said = False  # a refused restore is logged once per run

    # The slots under the names earlier versions (and their tests) read.
    @property
    def _last_good(self) -> str | None:
        return self.book[LAST_GOOD].key

    @property
    def _last_good_step(self) -> int:
        return self.book[LAST_GOOD].step

    @property
    def _last_good_level(self) -> float:
        return self.book[LAST_GOOD].value

    @property
    def _start_state(self) -> str | None:
        return self.book[START].key

    @property
    def range_test(self) -> RangeTest | None:
        """The running probe when it is a range test (``probe`` is the one slot)."""
        return self.probe if isinstance(self.probe, RangeTest) else None

    @property
    def branches(self) -> BranchTrial | None:
        """The running probe when it is a branch trial (``probe`` is the one slot)."""
        return self.probe if isinstance(self.probe, BranchTrial) else None

    # -- snapshots ----------------------------------------------------------------------------
    def capture(self, step: int) -> Snapshot:
        c = self.controls
        handles = {name: getattr(c, name).state_dict() for name in _CONTROL_HANDLES}
        extra = {"controls": handles, **self._capture_extra()}
        return take_snapshot(step, c.model, c.optimizer, c.scheduler, c.scaler, extra=extra)

    def restore(self, snap: Snapshot) -> None:
        """Put every live object back as it was in ``snap``, the Guard's own state included."""
        c = self.controls
        restore_snapshot(snap, c.model, c.optimizer, c.scheduler, c.scaler)
        self._restore_handles(snap)
        self._restore_extra(snap.extra)

    def _refused(self, exc: SnapshotMismatchError) -> str:
        """The one-line reason a restore was refused (nothing was touched); logged once."""
        reason = f"could not roll back: {exc}"
        if not self._mismatch_said:
            self._mismatch_said = True
            logger.warning(
                "unstuck: %s; the run goes on as it is (call add_param_group before building "
                "the Guard, or build a new Guard after changing the optimizer)",
                reason,
            )
        return reason

    def _restore_handles(self, snap: Snapshot) -> None:
        """Only unstuck's own handles (LR multiplier, clip, accumulation, stop) from ``snap``:
        what an action changed through them is undone even when the model cannot be."""
        handles = snap.extra.get("controls")
        if handles is not None:
            for name in _CONTROL_HANDLES:
                getattr(self.controls, name).load_state_dict(handles[name])

    def _restore_or_forget(self, slot: str) -> Snapshot | None:
        """Restore a kept snapshot (last good, start) if it still fits; else drop it."""
        snap = self.book.get(slot)
        if snap is None:
            return None
        try:
            self.restore(snap)
        except SnapshotMismatchError as exc:
            self._refused(exc)
            self.book.empty(slot)
            return None
        return snap

    def best_snapshot(self) -> Snapshot | None:
        return self.book.get(BEST)

    def note_validation(self, step: int, value: float) -> None:
        """Keep a snapshot at each new best validation loss (for ``keep_best_and_stop``)."""
        if not self.policy.acts or not math.isfinite(value) or value >= self.book[BEST].value:
            return
        if self.probing:
            return  # a probe's state is not the run's
        self.book[BEST].value = value
        self.book.empty(BEST)
        self.book.fill(BEST, self.capture(step))

    def note_healthy(
        self, step: int, state: str, finite: bool, level: float = math.nan, force: bool = False
    ) -> None:
        """Refresh the last-good snapshot on a healthy flush (finite loss, a state that is not
        unstable, no action waiting for its verdict) at most every ``LAST_GOOD_EVERY`` steps;
        ``force``: now (a kept verdict: the state it leaves is a good one to return to).
        ``level``: the flush's mean loss, which a later restore must beat."""
        start = self.book[START]
        if start.key is not None and step - start.step > self.horizon:
            self.forget_start()  # past the restart window: free the memory
        if not self.policy.acts or self.probing or not finite:
            return
        if self.pending is not None or state not in HEALTHY_STATES:
            return
        if not force and step - self.book[LAST_GOOD].step < LAST_GOOD_EVERY:
            return
        self.book.empty(LAST_GOOD)
        level = level if math.isfinite(level) else math.inf
        self.book.fill(LAST_GOOD, self.capture(step), step=step, value=level)

    def explains(self, cause: str) -> ActionRecord | None:
        """The pending action, when a new finding of ``cause`` is its own effect (an LR raised,
        a restart or a bump running, momentum added: the loss it drives up is not a cause in
        the user's run). ``None`` otherwise."""
        p = self.pending
        if p is None or not _declared(cause, "lr_raise_effect"):
            return None
        action = all_actions().get(p.record.name)
        raises = action is not None and action.drives_loss_up(p.record.params)
        return p.record if raises else None

    def note_start(self, step: int) -> None:
        """Keep the state the run starts from (before its first optimizer step), for one
        horizon: a remedy whose cause restarts (``Rule.restart_remedies``: a cut for a far too
        high LR, a missing warm-up), found that early, restarts from it."""
        if not self.policy.acts:
            return
        self.book.empty(START)
        self.book.fill(START, self.capture(step), step=step)

    def forget_start(self) -> None:
        self.book.empty(START)

    def _restarts(self, step: int, proposal: Proposal) -> bool:
        """Whether this remedy starts over from the run's first state: its cause declares it a
        restart remedy, the action allows it for these parameters, and the start is recent."""
        start = self.book[START]
        if start.key is None or step - start.step > self.horizon:
            return False
        rule = _rule(proposal.cause)
        if rule is None or proposal.action not in rule.restart_remedies:
            return False
        return get_action(proposal.action).restarts(proposal.params)

    def note_effect(self, finding: Finding) -> bool:
        """Record ``finding`` as the pending action's effect when the action explains it (see
        :meth:`explains`); returns whether it did. The action's verdict then judges it."""
        record = self.explains(finding.cause)
        if record is None:
            return False
        effects = record.evidence.setdefault("effects", {})
        effects[finding.cause] = max(float(effects.get(finding.cause, 0.0)), finding.confidence)
        return True

    # -- decisions ----------------------------------------------------------------------------
    @property
    def probing(self) -> bool:
        return self.probe is not None

    def flush_hint(self, step: int) -> int | None:
        """Steps until the engine wants the next flush during a probe (``None``: no opinion)."""
        if self.probe is None:
            return None
        hint = self.probe.flush_hint(step)
        return PROBE_FLUSH if hint is None else hint

    def probe_allowance(self, step: int) -> int:
        """Probe steps still allowed by the budget at ``step``."""
        return max(int(self.probe_budget * max(step, 0)) - self.probe_steps, 0)

    def new_episode(self, start: int | None) -> None:
        """A new plateau began: remedies rolled back on the last one may be tried again."""
        if start != self.episode:
            self.episode = start
            self.tried = set()
            self._budget_noted = set()

    def decide(
        self,
        step: int,
        state: str,
        findings: Sequence[Finding],
        loss: tuple[np.ndarray, np.ndarray],
        plateau: Plateau | None,
        *,
        act: bool = True,
    ) -> list[Event]:
        """One flush's decision on the training loss: the detector's open ``plateau`` becomes
        the episode, then the policy is asked (unless ``act`` is False: no step is left to
        judge an action on).

        While an action is judged or probing, the plateau it was taken on stays the episode: a
        plateau that closes and reopens in the meantime must not clear what was tried, or a
        rolled-back rung would be proposed again at once.
        """
        if self.pending is None and not self.probing:
            self.new_episode(plateau.start if plateau is not None else None)
        if not act:
            return []
        return self.maybe_act(
            step,
            state,
            findings,
            loss,
            plateau_kind=plateau.kind if plateau is not None else None,
            plateau_start=plateau.start if plateau is not None else None,
        )

    def maybe_act(
        self,
        step: int,
        state: str,
        findings: Sequence[Finding],
        loss: tuple[np.ndarray, np.ndarray],
        plateau_kind: str | None = None,
        plateau_start: int | None = None,
    ) -> list[Event]:
        """Ask the policy and, if it proposes something it can do, snapshot and start it."""
        events: list[Event] = []
        if (
            not self.policy.acts
            or self.pending is not None
            or self.probing
            or step < self.quiet_until
            or self.controls.stop.requested
        ):
            return events
        waiting: set[str] = set()  # out of probe budget now; may run at a later flush
        for _ in range(PROPOSALS_PER_DECISION):
            proposal = self.policy.propose(
                step=step,
                state=state,
                findings=findings,
                tried=frozenset(self.tried | waiting),
                plateau_kind=plateau_kind,
                plateau_start=plateau_start,
            )
            if proposal is None:
                return events
            why_not = self._why_not(step, proposal)
            if why_not is None and is_probe(proposal.action) and not _recent_finite(loss):
                why_not = "the loss is non-finite: no probe starts from a broken state"
            refuted = self.refuted.get(_refute_key(proposal.cause, proposal.action))
            if why_not is None and refuted is not None:
                why_not = f"{proposal.action} for {proposal.cause} rolled back at step {refuted}"
            over_budget = why_not is not None and why_not.startswith("probe budget")
            if over_budget:
                waiting.add(proposal.key)
            else:
                self.tried.add(proposal.key)
            if why_not is not None:
                if over_budget:
                    # The measuring rung is worth waiting for: the budget grows with the steps,
                    # and jumping to the next rung now would act blind. Said once per plateau.
                    if proposal.key not in self._budget_noted:
                        self._budget_noted.add(proposal.key)
                        events.append(("action", self._skipped(step, proposal, why_not)))
                    return events
                events.append(("action", self._skipped(step, proposal, why_not)))
                continue
            events += self._start(step, proposal, loss, findings, state)
            return events
        return events

    def _why_not(self, step: int, proposal: Proposal) -> str | None:
        kind = probe_kind(proposal.action)
        if kind is None or kind.is_action:
            action = get_action(proposal.action)
            action.validate(proposal.params)
            if action.changes_lr and self.controls.lr_locked:
                return self.controls.lr_locked
            reason = action.unavailable(self.controls, proposal.params)
            if reason is not None:
                return reason
        if kind is not None:
            allowance = self.probe_allowance(step)
            share = self.probe_budget
            return kind.over_budget(allowance, step, share, proposal.params, self.horizon)
        return None

    def _skipped(self, step: int, proposal: Proposal, why_not: str) -> dict[str, Any]:
        record = self._record(step, proposal, outcome="skipped")
        record.evidence["skipped_because"] = why_not
        record.verified_step = step
        return record.to_dict()

    def _record(self, step: int, proposal: Proposal, outcome: str = "pending") -> ActionRecord:
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

    def _back_to_last_good(
        self, proposal: Proposal, state: str, loss: tuple[np.ndarray, np.ndarray]
    ) -> bool:
        """Whether to restore the last good state before ``proposal``: the loss went non-finite
        (or the run diverges) and that state's loss was lower than the loss now. A final action
        (a stop on the best state) puts back a state of its own."""
        last_good = self.book[LAST_GOOD]
        if last_good.key is None or _action_declares(proposal.action, "final"):
            return False
        if _declared(proposal.cause, "broken_state"):
            return True
        if state != "diverging":
            return False
        return _level(loss) > last_good.value

    def _start(
        self,
        step: int,
        proposal: Proposal,
        loss: tuple[np.ndarray, np.ndarray],
        findings: Sequence[Finding],
        state: str = "",
    ) -> list[Event]:
        restored_from: int | None = None
        restarted_from: int | None = None
        start = self.book[START]
        if start.key is not None and step - start.step > self.horizon:
            self.forget_start()
        before_steps, before = _before_window(step, loss)
        if self._back_to_last_good(proposal, state, loss):
            # Retry from the last good state (finite, lower loss), not from the broken one; the
            # verdict compares with the loss before that state, where the run was good.
            snap = self._restore_or_forget(LAST_GOOD)
            if snap is not None:
                restored_from = snap.step
                before_steps, before = _before_window(snap.step, loss)
        snapshot = self.snapshots.put(self.capture(step))
        if self._restarts(step, proposal):
            # A rollback returns to the state this action found (``snapshot``), not the start.
            first = self._restore_or_forget(START)
            restarted_from = None if first is None else first.step
            self.forget_start()
        kind = probe_kind(proposal.action)
        if kind is not None and not kind.is_action:  # a probe that is no action of its own
            self.probe = kind.start(
                self, step, snapshot, proposal, None, (before_steps, before), self.horizon
            )
            return [("action", self.probe.record.to_dict())]
        action = get_action(proposal.action)
        params = dict(proposal.params)
        if kind is not None:
            params = kind.fit_params(params, self.probe_allowance(step))
            proposal = Proposal(proposal.action, params, proposal.reason, proposal.cause)
        record = self._record(step, proposal)
        if restored_from is not None:
            record.evidence["restored_last_good_step"] = restored_from
        if restarted_from is not None:
            record.evidence["restarted_from_step"] = restarted_from
            ran = step - restarted_from
            if action.duration(params) == 0 and ran >= MIN_RESTART_COMPARE:
                # The unchanged run is on record for ``ran`` steps from the same start: an
                # instant change restarted is judged against it at the same steps from the
                # start, as soon as it has run as many (not after a horizon a short run cannot
                # afford). A ramp (a warm-up) is still ramping then: it waits its horizon.
                record.evidence["restart_compare_steps"] = ran
        try:
            token = action.apply(self.controls, params)
        except SnapshotMismatchError as exc:  # a final action: the best state no longer fits
            self.snapshots.drop(snapshot)
            if self.book[BEST].key is not None:
                self.book.empty(BEST)
                self.book[BEST].value = math.inf
            record.outcome = "skipped"
            record.evidence["skipped_because"] = self._refused(exc)
            record.verified_step = step
            return [("action", record.to_dict())]
        record.evidence.update({k: v for k, v in token.items() if _is_primitive(v)})
        if kind is not None:
            record.outcome = "probing"
            self.probe = kind.start(
                self, step, snapshot, proposal, record, (before_steps, before), self.horizon
            )
            return [("action", record.to_dict())]
        if action.final:
            record.outcome = "kept"
            record.verified_step = step
            self.snapshots.drop(snapshot)
            return [("action", record.to_dict())]
        due = step + max(self.horizon, action.duration(params))
        if "restart_compare_steps" in record.evidence:
            due = step + int(record.evidence["restart_compare_steps"])
        self.pending = _Pending(record, snapshot, before_steps, before, due)
        return [("action", record.to_dict())]

    # -- probes -------------------------------------------------------------------------------
    def advance_probe(self, step: int, steps: np.ndarray, values: np.ndarray) -> list[Event]:
        """Feed the losses of the steps since the last flush to the running probe."""
        probe = self.probe
        if probe is None:
            return []
        try:
            events = probe.advance(step, steps, values)
        except SnapshotMismatchError as exc:
            return self._abandon_probe(step, exc)
        if not probe.done:
            return events
        self.probe = None
        self.probe_steps += probe.spent
        self.probe_nonfinite += probe.nonfinite
        if probe.rests:
            self.quiet_until = step + self.cooldown
        if probe.follow is None:
            self.snapshots.drop(probe.snapshot)
            return events
        return events + self._adopt(step, probe, probe.follow)

    def _adopt(self, step: int, probe: Probe, proposal: Proposal) -> list[Event]:
        """Apply what a finished probe suggests, from the state it restored, as a pending
        action whose verdict compares with the loss before the probe (and whose rollback
        returns to the probe's snapshot)."""
        action = get_action(proposal.action)
        record = self._record(step, proposal)
        record.evidence.update(action.apply(self.controls, dict(proposal.params)))
        record.evidence.update(probe.follow_evidence)
        due = step + max(self.horizon, action.duration(proposal.params))
        self.pending = _Pending(record, probe.snapshot, *probe.before, due)
        return [("action", record.to_dict())]

    def _abandon_probe(self, step: int, exc: SnapshotMismatchError) -> list[Event]:
        """A probe whose snapshot no longer fits the model or optimizer: it ends here,
        ``failed`` with the reason; unstuck's handles go back to the probe's start."""
        probe = self.probe
        assert probe is not None
        self.probe = None
        self._restore_handles(self.snapshots.get(probe.snapshot))
        probe.release()
        self.snapshots.drop(probe.snapshot)
        self.probe_steps += max(step - probe.record.step, 0)
        self.probe_nonfinite += probe.nonfinite
        record = probe.record
        record.outcome = "failed"
        record.verified_step = step
        record.evidence["failed_because"] = self._refused(exc)
        if probe.rests:
            self.quiet_until = step + self.cooldown
        return [("action_outcome", record.to_dict())]

    # -- verification -------------------------------------------------------------------------
    def verify(
        self,
        step: int,
        loss: tuple[np.ndarray, np.ndarray],
        horizon: int | None = None,
        ending: bool = False,
    ) -> list[Event]:
        """Judge the pending action once its horizon has passed; roll back if it hurt.

        ``horizon`` overrides the engine's for this verdict (``finish`` judges what ran).
        ``ending``: the run ends here, so only harm already shown is undone: the loss now
        above its level at the action (not a descent slowed: the run still went further), and
        not a cut that did not help (its cost would come later, and there is no later); an
        undecided verdict leaves the action ``unverified``. Otherwise the rollback would throw
        away every step since the action.
        """
        p = self.pending
        if p is None or self.probing:
            return []
        steps, values = loss
        broke = not bool(np.all(np.isfinite(values[steps > p.record.step])))
        if step < p.due and not broke:
            return []
        span = self.horizon if horizon is None else horizon
        start = p.record.step + span // 2  # judge the second half: skip the transient
        after = steps >= start
        if broke:
            # A non-finite loss is never waited out: judge (worse) and roll back now, before
            # more steps run on a broken state.
            after = steps > p.record.step
        # A restart rewound the descent before it, so that descent's projection says nothing
        # about the restarted run: its verdict compares levels only (the loss after against the
        # level the action found).
        restarted = "restarted_from_step" in p.record.evidence
        paired = p.record.evidence.get("restart_compare_steps")
        before_steps, before = p.before_steps, p.before
        if paired is not None and not broke and step - p.record.step >= int(paired):
            # Same steps from the start, second halves: the unchanged run's steps
            # (start + L/2, start + L] against the restart's (action + L/2, action + L].
            first = float(p.record.evidence["restarted_from_step"])
            half, ran = int(paired) // 2, int(paired)
            keep = (before_steps > first + half) & (before_steps <= first + ran)
            before_steps, before = before_steps[keep], before[keep]
            after = (steps > p.record.step + half) & (steps <= p.record.step + ran)
        # At the end of the run the question is only whether the state now is worse than the
        # one the action found (levels): a descent it slowed still left the run further on.
        verdict = judge(
            before_steps,
            before,
            steps[after],
            values[after],
            use_trend=not restarted and not ending,
        )
        p.record.evidence.update(
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
        p.record.verified_step = step
        # A cut must earn its keep: its cost comes later (a slower descent, a saddle it can no
        # longer leave — the ReduceLROnPlateau failure of REFERENCE.md §1b), so a cut after
        # which the loss is not significantly better is undone; other actions stay unless worse.
        idle_cut = _cuts_lr(p.record) and not verdict.better and not ending
        # A verdict that cannot decide (too few points before or after: an infinite standard
        # error) keeps nothing: "not shown worse" is not evidence when nothing could be shown.
        undecided = not verdict.worse and not math.isfinite(verdict.stderr)
        if undecided and ending:
            p.record.outcome = "unverified"
            self.snapshots.drop(p.snapshot)
            self.pending = None
            return [("action_outcome", p.record.to_dict())]
        refused: str | None = None
        if verdict.worse or idle_cut or undecided:
            snap = self.snapshots.get(p.snapshot)
            try:
                self.restore(snap)
            except SnapshotMismatchError as exc:
                self._restore_handles(snap)
                refused = self._refused(exc)
        if refused is not None:
            # The model and optimizer train on as they are; what the action changed through
            # unstuck's handles (the LR multiplier, clip, accumulation) is undone.
            p.record.outcome = "failed"
            p.record.evidence["failed_because"] = refused
            self.quiet_until = step + self.cooldown
            self.forget_start()
        elif verdict.worse or idle_cut or undecided:
            p.record.outcome = "rolled_back"
            p.record.evidence["rolled_back_because"] = (
                "a non-finite loss"
                if broke
                else "worse"
                if verdict.worse
                else "a cut that did not make the loss better"
                if idle_cut
                else "the verdict could not decide (too few loss points)"
            )
            self.quiet_until = step  # the next rung may be tried at once
            cause = str(p.record.evidence.get("cause") or "")
            if cause and not _declared(cause, "broken_state") and not broke:
                self.refuted[_refute_key(cause, p.record.name)] = p.record.step
        else:
            p.record.outcome = "kept"
            self.quiet_until = step + self.cooldown
            self.forget_start()  # a restart would now undo what was just kept
        self.snapshots.drop(p.snapshot)
        self.pending = None
        if p.record.outcome == "kept":
            # The state a kept verdict leaves is the one to come back to if the run later
            # diverges (not one from before the rescue).
            self.note_healthy(step, "improving", True, level=_level(loss), force=True)
        events: list[Event] = [("action_outcome", p.record.to_dict())]
        if p.record.outcome == "kept" and not ending:  # nothing new starts as the run ends
            follow = get_action(p.record.name).follow_up(p.record)
            if follow is not None and not self.probing:
                events += self._start(step, follow, loss, ())
        return events

    def finish(self, step: int, loss: tuple[np.ndarray, np.ndarray]) -> list[Event]:
        """The run is ending: undo a running probe; judge a pending action on what there is.

        A sweep or a losing branch must not be the state a run ends in, so a probe in flight is
        restored to its snapshot (outcome ``interrupted``). A pending action with at least a
        quarter of its horizon behind it is judged on the second half of what it ran, and
        rolled back if that already shows harm (worse, not merely an idle cut: the steps since
        it would be thrown away for a cost that has no time left to come); with less, or a
        verdict that cannot decide, it stays ``unverified``.
        """
        events: list[Event] = []
        running = self.probe
        if running is not None:
            self.probe = None
            snap = self.snapshots.get(running.snapshot)
            try:
                self.restore(snap)
                running.record.outcome = "interrupted"
            except SnapshotMismatchError as exc:
                self._restore_handles(snap)
                running.record.outcome = "failed"
                running.record.evidence["failed_because"] = self._refused(exc)
            running.record.verified_step = step
            events.append(("action_outcome", running.record.to_dict()))
            running.release()
        p = self.pending
        if p is None:
            return events
        ran = step - p.record.step
        if ran < max(self.horizon // 4, 1):
            p.record.outcome = "unverified"
            p.record.verified_step = step
            events.append(("action_outcome", p.record.to_dict()))
            self.pending = None
            return events
        p.due = step
        return events + self.verify(step, loss, horizon=ran, ending=True)  # what ran

    def close(self) -> None:
        self.snapshots.close()

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only. Includes the pending action and its snapshot, so a
        resumed run verifies (and can roll back) an action taken before the checkpoint. A probe
        running at checkpoint time is saved as its snapshot: a resumed run restores it."""
        pending = None
        p = self.pending
        if p is not None:
            pending = {
                "record": p.record.to_dict(),
                "snapshot": self.snapshots.get(p.snapshot).to_dict(),
                "before_steps": [float(v) for v in p.before_steps],
                "before": [float(v) for v in p.before],
                "due": p.due,
            }
        probe = None
        running = self.probe
        if running is not None:
            probe = {
                "record": running.record.to_dict(),
                "snapshot": self.snapshots.get(running.snapshot).to_dict(),
            }
        return {
            "quiet_until": self.quiet_until,
            "tried": sorted(self.tried),
            "budget_noted": sorted(self._budget_noted),
            "episode": self.episode,
            "pending": pending,
            "probe": probe,
            "probe_steps": self.probe_steps,
            "refuted": dict(self.refuted),
            "best_value": self.book[BEST].value,
            "best": best.to_dict() if (best := self.best_snapshot()) is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> list[ActionRecord]:
        """Load; returns records of probes that were interrupted and have now been undone."""
        self.quiet_until = int(state.get("quiet_until", 0))
        self.tried = set(state.get("tried", []))
        self._budget_noted = set(state.get("budget_noted", []))
        episode = state.get("episode")
        self.episode = None if episode is None else int(episode)
        self.probe_steps = int(state.get("probe_steps", 0))
        self.refuted = {str(k): int(v) for k, v in state.get("refuted", {}).items()}
        self.book.empty(BEST)
        self.book[BEST].value = float(state.get("best_value", math.inf))
        best = state.get("best")
        if best:
            self.book.fill(BEST, Snapshot.from_dict(best))
        pending = state.get("pending")
        self.pending = None
        self.probe = None
        if pending is not None:
            self.pending = _Pending(
                record=ActionRecord.from_dict(pending["record"]),
                snapshot=self.snapshots.put(Snapshot.from_dict(pending["snapshot"])),
                before_steps=np.asarray(pending.get("before_steps", []), dtype=np.float64),
                before=np.asarray(pending["before"], dtype=np.float64),
                due=int(pending["due"]),
            )
            if self.pending.before_steps.size != self.pending.before.size:
                self.pending.before_steps = np.arange(self.pending.before.size, dtype=np.float64)
        interrupted = []
        probe = state.get("probe")
        if probe is not None:
            self.restore(Snapshot.from_dict(probe["snapshot"]))
            record = ActionRecord.from_dict(probe["record"])
            record.outcome = "interrupted"
            interrupted.append(record)
        return interrupted


def merge_action_events(actions: list[ActionRecord], events: Sequence[Event]) -> list[ActionRecord]:
    """Fold the engine's ``action``/``action_outcome`` events into ``actions`` (one entry per
    action, identified by name and step, replaced by its latest version); returns the records
    the events carried, in order, for the console."""
    acted = []
    for kind, payload in events:
        if kind not in ("action", "action_outcome"):
            continue
        record = ActionRecord.from_dict(payload)
        acted.append(record)
        for i, known in enumerate(actions):
            if known.name == record.name and known.step == record.step:
                actions[i] = record
                break
        else:
            actions.append(record)
    return acted


def _before_window(step: int, loss: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The loss points of the ``PRE_WINDOW`` steps up to ``step``: what a verdict compares to."""
    steps, values = loss
    keep = (steps > step - PRE_WINDOW) & (steps <= step)
    return steps[keep].astype(np.float64), values[keep].astype(np.float64)


def _recent_finite(loss: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether the latest loss points are all finite (a probe never starts on a broken state)."""
    values = loss[1][-LEVEL_POINTS:]
    return bool(np.all(np.isfinite(values)))


def _level(loss: tuple[np.ndarray, np.ndarray]) -> float:
    """The mean of the latest finite loss points (``inf`` when there are none)."""
    values = loss[1][-LEVEL_POINTS:]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.inf


def _refute_key(cause: str | None, action: str) -> str:
    return f"{cause}:{action}"


def _cuts_lr(record: ActionRecord) -> bool:
    """Whether the recorded action lowers the LR for good (``Action.cuts_lr``)."""
    action = all_actions().get(record.name)
    return action is not None and action.cuts_lr(record.params)


def _rule(cause: str | None) -> Rule | None:
    """The registered rule of ``cause`` (``None``: no cause, or none by that name)."""
    return all_rules().get(cause) if cause else None


def _declared(cause: str | None, flag: str) -> bool:
    """Whether the rule of ``cause`` declares ``flag`` (a boolean ``Rule`` attribute)."""
    rule = _rule(cause)
    return rule is not None and bool(getattr(rule, flag))


def _action_declares(name: str, flag: str) -> bool:
    """Whether the registered action ``name`` declares ``flag`` (a boolean ``Action``
    attribute); a probe that is no action declares none."""
    action: Action | None = all_actions().get(name)
    return action is not None and bool(getattr(action, flag))


def _is_primitive(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None
