"""The rescue engine: snapshot, apply, verify after a horizon, keep or roll back; run probes.

Every action is preceded by a full snapshot (model, optimizer, scheduler, scaler, RNG and the
Guard's own state). After ``max(horizon, duration)`` steps the loss since the action is judged
(:mod:`unstuck.rescue.pending`, :func:`unstuck.rescue.verify.judge`); if it is significantly
worse the snapshot is restored, the action is ``rolled_back`` and the policy's next rung is
tried. A kept action is followed by a cooldown, or by its own next step (``Action.follow_up``).

A probe (:mod:`unstuck.rescue.probe`) spans several of the user's steps, during which detection
and diagnosis pause; it restores a state of its choosing and may hand over a follow-up, applied
and verified like any action. Probe steps are budgeted: at most ``probe_budget`` (default 10 %)
of the steps so far. The engine names no action or cause (:mod:`unstuck.rescue.declared`); its
kept states live in named slots (:mod:`unstuck.rescue.snapshot_book`), what was tried in an
episode (:mod:`unstuck.rescue.episode`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from unstuck.rescue.base import Controls, get_action
from unstuck.rescue.branches import BranchTrial
from unstuck.rescue.declared import action_declares, cause_declares
from unstuck.rescue.episode import Episode
from unstuck.rescue.events import merge_action_events
from unstuck.rescue.pending import Pending, before_window, level, recent_finite, record_for
from unstuck.rescue.policy import Policy, Proposal
from unstuck.rescue.probe import Event, Probe, is_probe, probe_kind
from unstuck.rescue.range_test import RangeTest
from unstuck.rescue.restart import good_state_to_return, restarts_from_start
from unstuck.rescue.snapshot import (
    Snapshot,
    SnapshotMismatchError,
    SnapshotStore,
    restore_snapshot,
    take_snapshot,
)
from unstuck.rescue.snapshot_book import LAST_GOOD, START, KeptStates
from unstuck.rescue.verify import judge
from unstuck.types import ActionRecord, EngineEvent, Finding, Plateau

__all__ = ["DIVERGED_UNDER", "RescueEngine", "merge_action_events"]

logger = logging.getLogger("unstuck")

DEFAULT_HORIZON = 200  # steps an action runs before it is judged
DEFAULT_COOLDOWN = 100  # steps after a kept action before the next one
DEFAULT_PROBE_BUDGET = 0.1  # probe steps may be at most this share of the steps so far
DEFAULT_SNAPSHOT_MEMORY = 1 << 30  # bytes of snapshots held in memory before spilling to disk
PROBE_FLUSH = 1  # a probe that reads every step (the range test) stops before a blow-up
HEALTHY_STATES = frozenset({"improving", "slow", "hidden_progress", "plateau"})
PROPOSALS_PER_DECISION = 8  # unavailable proposals skipped before giving up this flush
MIN_RESTART_COMPARE = 20  # a restarted cut with this many original steps is judged against them
# Why a pending action is rolled back before its horizon: the detector confirmed a rise above
# the loss before it (the monitor then decides on that divergence, not the restored state).
DIVERGED_UNDER = "the loss diverged under it"
_HANDLES = ("lr", "clip", "accumulation", "stop", "skip")  # unstuck's own handles in snapshots
Loss = tuple[np.ndarray, np.ndarray]


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
        self.kept = KeptStates(self.snapshots, horizon, self.capture, self.restore, self._refused)
        self.book = self.kept.book
        self._capture_extra = capture_extra or dict
        self._restore_extra = restore_extra or (lambda extra: None)
        self.evaluate = evaluate or (lambda: None)
        controls.restore = self.restore
        controls.best = self.best_snapshot
        self.pending: Pending | None = None  # the one action waiting for its verdict
        self.probe: Probe | None = None  # the one probe running
        self.quiet_until = 0
        self.episodes = Episode()  # what was tried on this plateau, what the run refuted
        self.probe_steps = 0  # steps spent measuring so far (range tests, losing branches)
        self.probe_nonfinite = 0  # probe steps whose loss was non-finite (the goal: none)
        self._mismatch_said = False  # a refused restore is logged once per run

    # Views under the names earlier versions (and their tests) read.
    tried = property(lambda self: self.episodes.tried)
    episode = property(lambda self: self.episodes.start)
    refuted = property(lambda self: self.episodes.refuted)
    _last_good = property(lambda self: self.book[LAST_GOOD].key)
    _last_good_step = property(lambda self: self.book[LAST_GOOD].step)
    _last_good_level = property(lambda self: self.book[LAST_GOOD].value)
    _start_state = property(lambda self: self.book[START].key)

    @property
    def range_test(self) -> RangeTest | None:
        return self.probe if isinstance(self.probe, RangeTest) else None

    @property
    def branches(self) -> BranchTrial | None:
        return self.probe if isinstance(self.probe, BranchTrial) else None

    # -- snapshots ----------------------------------------------------------------------------
    def capture(self, step: int) -> Snapshot:
        c = self.controls
        handles = {name: getattr(c, name).state_dict() for name in _HANDLES}
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
            for name in _HANDLES:
                if name in handles:  # a snapshot saved before a handle existed lacks it
                    getattr(self.controls, name).load_state_dict(handles[name])

    def _roll_back(self, key: str) -> str | None:
        """Restore the store's snapshot ``key``; when it no longer fits, undo at least what went
        through unstuck's handles and return why the rest could not be (``None``: restored)."""
        snap = self.snapshots.get(key)
        try:
            self.restore(snap)
        except SnapshotMismatchError as exc:
            self._restore_handles(snap)
            return self._refused(exc)
        return None

    def best_snapshot(self) -> Snapshot | None:
        return self.kept.best()

    def note_validation(self, step: int, value: float) -> None:
        """Keep a snapshot at each new best validation loss (for a stop on the best state)."""
        if self.policy.acts and not self.probing:  # a probe's state is not the run's
            self.kept.note_best(step, value)

    def note_healthy(
        self,
        step: int,
        state: str,
        finite: bool,
        level: float = math.nan,
        force: bool = False,
        stderr: float = 0.0,
    ) -> None:
        """Refresh the ring of good snapshots on a healthy flush (finite loss, a state that is
        not unstable, no action waiting for its verdict) at most every ``ring_every(step)``
        steps (``snapshot_book``); ``force``: now (a kept verdict: the state it leaves is a
        good one to return to).
        ``level``: the flush's mean loss, which a later restore must beat; ``stderr``: its
        standard error (what tells a later state inside a spike from minibatch noise)."""
        self.kept.start_within_horizon(step)  # past the restart window: free the memory
        if not self.policy.acts or self.probing or not finite:
            return
        if self.pending is None and state in HEALTHY_STATES:
            self.kept.note_good(step, level, force, stderr)

    def note_start(self, step: int) -> None:
        """Keep the state the run starts from (before its first optimizer step), for one
        horizon: a remedy its cause restarts (``Rule.restart_remedies``), found that early,
        starts over from it."""
        if self.policy.acts:
            self.kept.note_start(step)

    def forget_start(self) -> None:
        self.kept.forget_start()

    def explains(self, cause: str) -> ActionRecord | None:
        """The pending action, when a new finding of ``cause`` is its own effect (an LR raised,
        a restart or a bump running, momentum added: the loss it drives up is not a cause in
        the user's run). ``None`` otherwise."""
        p = self.pending
        return p.record if p is not None and p.explains(cause) else None

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
        self.episodes.begin(start)

    def decide(
        self,
        step: int,
        state: str,
        findings: Sequence[Finding],
        loss: Loss,
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
        kind, start = (plateau.kind, plateau.start) if plateau is not None else (None, None)
        return self.maybe_act(step, state, findings, loss, kind, start)

    def maybe_act(
        self,
        step: int,
        state: str,
        findings: Sequence[Finding],
        loss: Loss,
        plateau_kind: str | None = None,
        plateau_start: int | None = None,
    ) -> list[Event]:
        """Ask the policy and, if it proposes something it can do, snapshot and start it."""
        events: list[Event] = []
        busy = self.pending is not None or self.probing or step < self.quiet_until
        if not self.policy.acts or busy or self.controls.stop.requested:
            return events
        episode = self.episodes
        waiting: set[str] = set()  # out of probe budget now; may run at a later flush
        for _ in range(PROPOSALS_PER_DECISION):
            proposal = self.policy.propose(
                step=step,
                state=state,
                findings=findings,
                tried=frozenset(episode.tried | waiting),
                plateau_kind=plateau_kind,
                plateau_start=plateau_start,
            )
            if proposal is None:
                return events
            why_not = self._why_not(step, proposal, state, level(loss))
            if why_not is None and is_probe(proposal.action) and not recent_finite(loss):
                why_not = "the loss is non-finite: no probe starts from a broken state"
            refuted = episode.refuted_at(proposal.cause, proposal.action)
            if why_not is None and refuted is not None:
                why_not = f"{proposal.action} for {proposal.cause} rolled back at step {refuted}"
            if why_not is None:
                episode.tried.add(proposal.key)
                return events + self._start(step, proposal, loss, findings, state)
            if not why_not.startswith("probe budget"):
                episode.tried.add(proposal.key)
                events.append(EngineEvent.action(_skipped(step, proposal, why_not)))
                continue
            # The measuring rung is worth waiting for: the budget grows with the steps, and
            # jumping to the next rung now would act blind. Said once per plateau.
            waiting.add(proposal.key)
            if proposal.key not in episode.budget_noted:
                episode.budget_noted.add(proposal.key)
                events.append(EngineEvent.action(_skipped(step, proposal, why_not)))
            return events
        return events

    def _why_not(
        self, step: int, proposal: Proposal, state: str = "", now: float = math.inf
    ) -> str | None:
        if action_declares(proposal.action, "rewinds") and (
            good_state_to_return(self.kept, proposal, state, now) is None
        ):
            return "no good state from before the rise is held to rewind to"
        kind = probe_kind(proposal.action)
        if kind is None or kind.is_action:
            action = get_action(proposal.action)
            action.validate(proposal.params)
            if action.changes_lr and self.controls.lr_locked:
                return self.controls.lr_locked
            reason = action.unavailable(self.controls, proposal.params)
            if reason is not None or kind is None:
                return reason
        assert kind is not None
        allowance, share = self.probe_allowance(step), self.probe_budget
        return kind.over_budget(allowance, step, share, proposal.params, self.horizon)

    def _start(
        self,
        step: int,
        proposal: Proposal,
        loss: Loss,
        findings: Sequence[Finding],
        state: str = "",
    ) -> list[Event]:
        evidence: dict[str, Any] = {}
        self.kept.start_within_horizon(step)
        before = before_window(step, loss)
        rewound = 0
        slot = good_state_to_return(self.kept, proposal, state, level(loss))
        if slot is not None:
            # Retry from the newest good state from before the rise (finite, lower loss), not
            # from the broken one; the verdict compares with the loss before that state, where
            # the run was good.
            snap = self.kept.return_to(slot)
            if snap is not None:
                evidence["restored_last_good_step"] = snap.step
                evidence["good_states_held"] = self.kept.held_good()
                self.kept.forget_newer(slot)
                rewound = step - snap.step
                before = before_window(snap.step, loss)
        snapshot = self.snapshots.put(self.capture(step))
        if restarts_from_start(self.kept, step, proposal):
            # A rollback returns to the state this action found (``snapshot``), not the start.
            first = self.kept.return_to(START)
            if first is not None:
                evidence["restarted_from_step"] = first.step
            self.forget_start()
        kind = probe_kind(proposal.action)
        if kind is not None and not kind.is_action:  # a probe that is no action of its own
            self.probe = kind.start(self, step, snapshot, proposal, None, before, self.horizon)
            return [EngineEvent.action(self.probe.record)]
        action = get_action(proposal.action)
        params = dict(proposal.params)
        if action.rewinds:
            params = action.after_rewind(params, rewound)
            proposal = Proposal(proposal.action, params, proposal.reason, proposal.cause)
        if kind is not None:
            params = kind.fit_params(params, self.probe_allowance(step))
            proposal = Proposal(proposal.action, params, proposal.reason, proposal.cause)
        record = record_for(step, proposal)
        record.evidence.update(evidence)
        ran = step - int(evidence.get("restarted_from_step", step))
        if ran >= MIN_RESTART_COMPARE and action.duration(params) == 0:
            # The unchanged run is on record for ``ran`` steps from the same start: an instant
            # change restarted is judged against it at the same steps from the start, as soon
            # as it has run as many (not after a horizon a short run cannot afford). A ramp (a
            # warm-up) is still ramping then: it waits its horizon.
            record.evidence["restart_compare_steps"] = ran
        try:
            token = action.apply(self.controls, params)
        except SnapshotMismatchError as exc:  # a final action: the best state no longer fits
            self.snapshots.drop(snapshot)
            self.kept.forget_best()
            record.outcome = "skipped"
            record.evidence["skipped_because"] = self._refused(exc)
            record.verified_step = step
            return [EngineEvent.action(record)]
        record.evidence.update({k: v for k, v in token.items() if _is_primitive(v)})
        if kind is not None:
            record.outcome = "probing"
            self.probe = kind.start(self, step, snapshot, proposal, record, before, self.horizon)
        elif action.final:
            record.outcome = "kept"
            record.verified_step = step
            self.snapshots.drop(snapshot)
        else:
            due = step + max(self.horizon, action.duration(params))
            if "restart_compare_steps" in record.evidence:
                due = step + int(record.evidence["restart_compare_steps"])
            self.pending = Pending(record, snapshot, *before, due)
        return [EngineEvent.action(record)]

    # -- probes -------------------------------------------------------------------------------
    def advance_probe(self, step: int, steps: np.ndarray, values: np.ndarray) -> list[Event]:
        """Feed the losses of the steps since the last flush to the running probe."""
        probe = self.probe
        if probe is None:
            return []
        try:
            events = probe.advance(step, steps, values)
        except SnapshotMismatchError as exc:
            # Its snapshot no longer fits the model or optimizer: it ends here, ``failed``;
            # unstuck's handles go back to where it started.
            self._restore_handles(self.snapshots.get(probe.snapshot))
            events = [probe.abandon(step, self._refused(exc))]
        if not probe.done:
            return events
        self.probe = None
        self.probe_steps += probe.spent
        self.probe_nonfinite += probe.nonfinite
        if probe.rests:
            self.quiet_until = step + self.cooldown
        follow = probe.follow if probe.record.outcome != "failed" else None
        probe.release()
        if follow is None:
            self.snapshots.drop(probe.snapshot)
            return events
        # Applied from the state the probe restored; its verdict compares with the loss before
        # the probe, and its rollback returns to the probe's snapshot.
        action = get_action(follow.action)
        record = record_for(step, follow)
        record.evidence.update(action.apply(self.controls, dict(follow.params)))
        record.evidence.update(probe.follow_evidence)
        due = step + max(self.horizon, action.duration(follow.params))
        self.pending = Pending(record, probe.snapshot, *probe.before, due)
        return [*events, EngineEvent.action(record)]

    # -- verification -------------------------------------------------------------------------
    def verify(
        self,
        step: int,
        loss: Loss,
        horizon: int | None = None,
        ending: bool = False,
        diverging: bool = False,
    ) -> list[Event]:
        """Judge the pending action once its horizon has passed; roll back if it hurt.

        ``horizon`` overrides the engine's for this verdict (``finish`` judges what ran).
        ``ending``: the run ends here, so only harm already shown is undone: the loss now
        above its level at the action (not a descent slowed: the run still went further), and
        not a cut that did not help (its cost would come later, and there is no later); an
        undecided verdict leaves the action ``unverified``. Otherwise the rollback would throw
        away every step since the action.
        ``diverging``: the detector confirmed a rise at this flush. Before the horizon, the
        action is judged at once on everything since it, and rolled back if the loss is worse
        than before it (``DIVERGED_UNDER``): a spike during a pending action is not waited out
        for a horizon of steps on a broken state, and the divergence is then free to be
        answered (a rewind past it). Not worse: the action waits for its horizon as before.
        """
        p = self.pending
        if p is None or self.probing:
            return []
        broke = p.broke(loss)
        early = step < p.due and not broke
        if early and not diverging:
            return []
        span = self.horizon if horizon is None else horizon
        # At the end of the run the question is only whether the state now is worse than the
        # one the action found (levels): a descent it slowed still left the run further on.
        use_trend = not p.restarted and not ending
        verdict = judge(*p.windows(step, loss, span, broke or early), use_trend=use_trend)
        if early and not verdict.worse:
            return []  # a rise, but not above the loss before the action: its horizon decides
        why = p.weigh(verdict, step, broke, ending)
        if early:
            why = DIVERGED_UNDER
        refused = self._roll_back(p.snapshot) if why else None
        self.pending = None
        record = p.record
        if why == "":
            record.outcome = "unverified"
        elif refused is not None:
            # The model and optimizer train on as they are; what the action changed through
            # unstuck's handles (the LR multiplier, clip, accumulation) is undone.
            record.outcome = "failed"
            record.evidence["failed_because"] = refused
            self.quiet_until = step + self.cooldown
            self.forget_start()
        elif why is not None:
            record.outcome = "rolled_back"
            record.evidence["rolled_back_because"] = why
            self.quiet_until = step  # the next rung may be tried at once
            cause = str(record.evidence.get("cause") or "")
            if cause and not cause_declares(cause, "broken_state") and not broke:
                self.episodes.refute(cause, record.name, record.step)
        else:
            record.outcome = "kept"
            self.quiet_until = step + self.cooldown
            self.forget_start()  # a restart would now undo what was just kept
        self.snapshots.drop(p.snapshot)
        events: list[Event] = [EngineEvent.outcome(record)]
        if record.outcome != "kept":
            return events
        # The state a kept verdict leaves is the one to come back to if the run later diverges
        # (not one from before the rescue).
        self.note_healthy(step, "improving", True, level=level(loss), force=True)
        follow = None if ending else get_action(record.name).follow_up(record)
        if follow is not None and not self.probing:  # nothing new starts as the run ends
            events += self._start(step, follow, loss, ())
        return events

    def finish(self, step: int, loss: Loss) -> list[Event]:
        """The run is ending: undo a running probe; judge a pending action on what there is.

        A sweep or a losing branch must not be the state a run ends in, so a probe in flight is
        restored to its snapshot (outcome ``interrupted``). A pending action with at least a
        quarter of its horizon behind it is judged on the second half of what it ran, and
        rolled back if that already shows harm (worse, not merely an idle cut: the steps since
        it would be thrown away for a cost that has no time left to come); with less, or a
        verdict that cannot decide, it stays ``unverified``.
        """
        events: list[Event] = []
        probe = self.probe
        if probe is not None:
            refused = self._roll_back(probe.snapshot)
            outcome = "interrupted" if refused is None else "failed"
            events.append(probe.end(step, outcome, refused))
            probe.release()
            self.probe = None
        p = self.pending
        if p is None:
            return events
        ran = step - p.record.step
        if ran < max(self.horizon // 4, 1):
            p.record.outcome = "unverified"
            p.record.verified_step = step
            events.append(EngineEvent.outcome(p.record))
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
        p, probe = self.pending, self.probe
        return {
            "quiet_until": self.quiet_until,
            **self.episodes.state_dict(),
            "pending": p.state_dict(self.snapshots) if p is not None else None,
            "probe": probe.state_dict(self.snapshots) if probe is not None else None,
            "probe_steps": self.probe_steps,
            **self.kept.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> list[ActionRecord]:
        """Load; returns records of probes that were interrupted and have now been undone."""
        self.quiet_until = int(state.get("quiet_until", 0))
        self.episodes.load_state_dict(state)
        self.probe_steps = int(state.get("probe_steps", 0))
        self.kept.load_state_dict(state)
        pending = state.get("pending")
        self.pending = None if pending is None else Pending.from_state(pending, self.snapshots)
        self.probe = None
        probe = state.get("probe")
        if probe is None:
            return []
        self.restore(Snapshot.from_dict(probe["snapshot"]))
        record = ActionRecord.from_dict(probe["record"])
        record.outcome = "interrupted"
        return [record]


def _skipped(step: int, proposal: Proposal, why_not: str) -> ActionRecord:
    record = record_for(step, proposal, outcome="skipped")
    record.evidence["skipped_because"] = why_not
    record.verified_step = step
    return record


def _is_primitive(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None
