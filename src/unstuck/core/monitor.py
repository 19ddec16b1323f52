"""``Monitor``: unstuck's pipeline, once, for every front-end.

A front-end (the ``Guard`` over a torch loop, the Keras callback, and through the Guard the
Lightning and HF callbacks) measures: it hands the Monitor one window of signals at a time and
applies what it is told. The Monitor decides: it detects, judges the pending action, diagnoses,
asks the policy, runs the engine and records, in that order, the same way whoever calls it. The
shape is optax's ``GradientTransformation`` and Lightning's ``EarlyStopping``: one algorithm,
thin shells around it.

What a front-end supplies:

* ``controls``: the handles actions turn (:class:`~unstuck.rescue.Controls`), and an engine
  type whose ``capture``/``restore`` copy its framework's state (the default copies torch's);
* its signals, as a :class:`~unstuck.signals.host.Frame` per window (``loss`` is the series the
  train detector reads);
* optionally :class:`FrontEndHooks`: its own state in snapshots, facts read at each diagnosis
  (the optimizer's momentum), work before the rules run (the curvature probe), the configured
  LRs for the console, the loss on a probe set for branch trials.

Decided once for every front-end (docs/guard.md, "One pipeline"):

* validation losses are diagnosed as training losses are (the rules that read ``val_loss``,
  overfitting among them, answer then);
* a detector's state change is recorded before the pending action is judged: the store says
  what the run did, then what a rollback put back;
* no action starts on the final window: nothing would be left to judge it on;
* ``findings``, ``actions`` and ``plateaus`` are copies, plateaus sorted by start step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from unstuck.detect import PlateauDetector
from unstuck.diagnose import EvidenceBuilder, run_rules
from unstuck.diagnose.evidence import EvidenceView
from unstuck.diagnose.log import FindingLog
from unstuck.record.console import LOGGER_NAME, format_event_line, format_summary
from unstuck.record.recorder import Recorder, state_payload
from unstuck.rescue import Controls, RescueEngine
from unstuck.rescue.engine import DIVERGED_UNDER, merge_action_events
from unstuck.rescue.policy import Policy
from unstuck.signals.host import Frame, Series
from unstuck.types import (
    DIAGNOSE_ON,
    NOTABLE_STATES,
    ActionRecord,
    DetectorState,
    EngineEvent,
    Finding,
    Plateau,
    primitive,
)

__all__ = ["FrontEndHooks", "Monitor", "MonitorResults", "Update"]

logger = logging.getLogger(LOGGER_NAME)

T = TypeVar("T")


class LeadDecides(Protocol):
    """Under torch.distributed: run ``decide`` on rank 0 and hand its result to every rank."""

    def lead_decides(self, decide: Callable[[], T]) -> T: ...


def _no_extra(extra: dict[str, Any]) -> None:
    return None


def _no_step(step: int, state: str, series: str) -> None:
    return None


@dataclass
class FrontEndHooks:
    """What a front-end adds to the pipeline; every hook is optional."""

    #: the front-end's own state that belongs in a snapshot (accumulated gradients, counters)
    capture_extra: Callable[[], dict[str, Any]] = dict
    #: put that state back after a restore (the Monitor restores its detectors and evidence)
    restore_extra: Callable[[dict[str, Any]], None] = _no_extra
    #: the loss on a fixed probe set, for branch trials (``None``: no probe set)
    evaluate: Callable[[], list[float] | None] = lambda: None
    #: facts read at each diagnosis, which the run may change (the optimizer's momentum)
    live_facts: Callable[[], dict[str, Any]] = dict
    #: runs before the rules, on the rank that diagnoses (the curvature probe)
    before_rules: Callable[[int, str, str], None] = _no_step
    #: each param group's configured LR, so the console can name the LR to try
    config_lrs: Callable[[], list[float]] = list


@dataclass(frozen=True)
class Update:
    """What one window changed: the front-end applies nothing itself (actions already ran
    through its controls), it reads this to know when to call again and whether to stop."""

    state: DetectorState
    findings: list[Finding] = field(default_factory=list)  # recorded in this window
    actions: list[ActionRecord] = field(default_factory=list)  # taken or judged in it
    should_stop: bool = False
    next_window: int = 0  # steps until the Monitor wants the next window


class Monitor:
    """Detection, verification, diagnosis, the policy, the engine and the recorder, driven one
    window at a time by a front-end.

    Args:
        controls: the handles actions turn; the engine restores through them.
        policy: what to do about findings (``make_policy``'s result).
        recorder: where events and metrics go (``None`` records nothing, e.g. between fits).
        flush_every: steps per window unless the engine asks for a shorter one (a probe).
        engine_type: the engine class (a subclass copies another framework's state).
        engine_options: keyword arguments for the engine (horizon, cooldown, budgets).
        detector_options: keyword arguments for both plateau detectors.
        hooks: the front-end's additions (:class:`FrontEndHooks`).
        sync: under torch.distributed, who diagnoses (rank 0; every rank gets its findings).
        lead: whether this process prints (rank 0).
    """

    def __init__(
        self,
        controls: Controls,
        policy: Policy,
        recorder: Recorder | None,
        *,
        flush_every: int,
        engine_type: Callable[..., RescueEngine] = RescueEngine,
        engine_options: Mapping[str, Any] | None = None,
        detector_options: Mapping[str, Any] | None = None,
        hooks: FrontEndHooks | None = None,
        sync: LeadDecides | None = None,
        lead: bool = True,
    ) -> None:
        self.policy = policy
        self.recorder = recorder
        self.flush_every = flush_every
        self.hooks = hooks or FrontEndHooks()
        self._sync = sync
        self._lead = lead
        self._lr = controls.lr
        options = {"distance_signal": True, **dict(detector_options or {})}
        self.detector_options = options
        self.detectors = {
            "train": PlateauDetector("train", **options),
            "val": PlateauDetector("val", **options),
        }
        self._evidence = EvidenceBuilder()
        self._finding_log = FindingLog()
        self._actions: list[ActionRecord] = []
        self._current: list[Finding] = []
        self.val_points = 0
        self.engine = engine_type(
            controls,
            policy,
            capture_extra=self._capture_extra,
            restore_extra=self._restore_extra,
            evaluate=self.hooks.evaluate,
            **dict(engine_options or {}),
        )

    # -- what the front-end reads -------------------------------------------------------------
    @property
    def state(self) -> DetectorState:
        return self.detectors["train"].state

    @property
    def plateaus(self) -> list[Plateau]:
        """Every plateau found so far on train and validation loss, by start step."""
        found = [p for d in self.detectors.values() for p in d.plateaus]
        return sorted(found, key=lambda p: (p.start, p.series))

    @property
    def findings(self) -> list[Finding]:
        return list(self._finding_log.findings)

    @property
    def actions(self) -> list[ActionRecord]:
        return list(self._actions)

    @property
    def evidence(self) -> EvidenceView:
        return EvidenceView(self._evidence)

    @property
    def probing(self) -> bool:
        """A probe (range test, branch trial) runs: the weights are not the run's."""
        return self.engine.probing

    @property
    def should_stop(self) -> bool:
        return self.engine.controls.stop.requested

    def set_fact(self, name: str, value: Any) -> None:
        """A fact the rules read (parameter names, the optimizer's type), set once."""
        self._evidence.set(name, value)

    def loss_history(self) -> tuple[np.ndarray, np.ndarray]:
        return self._evidence.series("loss")

    # -- the windows ----------------------------------------------------------------------------
    def start(self, step: int) -> None:
        """The run begins (or a front-end joins it): diagnose the facts alone (an optimizer
        with no parameters needs no loss), and keep the start for an early restart."""
        self._diagnose(step, DetectorState.UNKNOWN, "train")
        self.engine.note_start(step)

    def observe(
        self,
        step: int,
        frame: Frame,
        *,
        rows: Sequence[tuple[str, int, float]] = (),
        final: bool = False,
    ) -> Update:
        """One window of training signals, ending at ``step``.

        Every series is recorded (``rows`` adds the front-end's own metrics). During a probe
        the loss goes to the probe alone: a sweep's blow-up is not the run's trajectory.
        Otherwise the evidence takes the frame, the train detector the loss, and the pipeline
        runs. ``final``: the run ends after this window, so nothing new is started.
        """
        signals = frame.signals
        metric_rows = [
            (name, int(s), float(v))
            for name, series in frame.series().items()
            for s, v in zip(series.steps, series.values)
        ]
        metric_rows.append(("lr_multiplier", step, self._lr.value))  # once per window
        self._log_metrics([*metric_rows, *rows])
        loss = signals.get("loss")
        state = self.state
        new: list[Finding] = []
        acted: list[ActionRecord] = []
        if self.engine.probing:
            if loss is not None:
                events = self.engine.advance_probe(
                    step, np.asarray(loss[0], dtype=np.int64), np.asarray(loss[1], dtype=float)
                )
                acted = self._emit(step, "train", events)
        else:
            self._evidence.add_frame(frame)
            # unstuck's own factor on the LR, beside the user's lr/<group>: a warm-up or a
            # restart that unstuck ran is part of the LR the rules read.
            self._evidence.add_series("lr_multiplier", [step], [self._lr.current()])
            if loss is not None and len(loss[0]):
                state, new, acted = self._detect_train(step, loss, signals, final)
        if self.recorder is not None:
            self.recorder.flush(wait=False)  # committed by the writer thread, off the step
        return self._update(state, new, acted, self.engine.flush_hint(step) or self.flush_every)

    def validate(self, step: int, value: float) -> Update:
        """One validation loss at ``step`` (already averaged over ranks by the front-end)."""
        if self.engine.probing:
            # A probe's state is not the run's: record the value, decide nothing on it.
            self._log_metrics([("val_loss_probe", step, value)])
            return self._update(self.state, [], [])
        self.engine.note_validation(step, value)
        self.val_points += 1
        detector = self.detectors["val"]
        before = detector.state
        # The latest parameter distance lets the validation series see hidden progress too:
        # grokking is a flat validation loss while the weights move.
        distances = self._evidence.series("param_distance")[1]
        state = detector.update(step, value, distance=distances[-1] if distances.size else None)
        self._evidence.add_series("val_loss", [step], [value])
        self._log_metrics([("val_loss", step, value)])
        _, new, acted = self._after_detect("val", step, before, state, final=False)
        return self._update(self.state, new, acted)

    def finish(self, step: int) -> Update:
        """The run ends: a probe in flight is put back; a pending action is judged on what it
        ran, and undone if that already shows harm."""
        acted = self._emit(step, "train", self.engine.finish(step, self.loss_history()))
        return self._update(self.state, [], acted)

    def close(self) -> None:
        """Free the engine's snapshots (the recorder is the front-end's to close)."""
        self.engine.close()

    def record_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.log_event(kind, step, payload)

    def summary(self, steps: int, lrs: Sequence[float]) -> list[str]:
        """The end-of-run summary, one string per line (``format_summary``)."""
        return format_summary(
            steps,
            plateaus=self.plateaus,
            findings=self._finding_log.findings,
            actions=self._actions,
            lrs=lrs,
            lr_multiplier=self._lr.value,
            policy=self.policy.name,
        )

    # -- the pipeline ---------------------------------------------------------------------------
    def _detect_train(
        self, step: int, loss: Series, signals: Mapping[str, Any], final: bool
    ) -> tuple[DetectorState, list[Finding], list[ActionRecord]]:
        detector = self.detectors["train"]
        before = detector.state
        snr = signals.get("grad_snr")
        state = detector.update_many(
            loss[0],
            loss[1],
            distance=signals.get("param_distance"),
            gradient_snr=snr[1][-1] if snr else None,
        )
        decided, new, acted = self._after_detect("train", step, before, state, final)
        if not final:
            # Judged on this window's losses with the state the detector read from them, not
            # the state a rollback put back: those losses belong to the undone branch.
            values = np.asarray(loss[1], dtype=float)
            finite = bool(np.all(np.isfinite(values)))
            level = float(values.mean()) if finite and values.size else math.nan
            stderr = float(values.std() / math.sqrt(values.size)) if finite and values.size else 0.0
            self.engine.note_healthy(step, state, finite, level=level, stderr=stderr)
        return decided, new, acted

    def _after_detect(
        self, series: str, step: int, before: DetectorState, state: DetectorState, final: bool
    ) -> tuple[DetectorState, list[Finding], list[ActionRecord]]:
        detector = self.detectors[series]
        plateau = detector.current
        changed = state != before
        if changed:
            self.record_event(
                "state", step, state_payload(series, before, state, plateau, detector.stats())
            )
        events = (
            self.engine.verify(
                step, self.loss_history(), diverging=state == DetectorState.DIVERGING
            )
            if series == "train"
            else []
        )
        rolled = [event for event in events if event.rolled_back]
        if rolled:
            # The rollback put the detectors back too: decide on the state they hold now (the
            # plateau the action was taken on), so the policy moves to its next rung there;
            # unless it answered a divergence confirmed under the action, which is what the
            # policy answers next (a rewind to before the rise).
            diverged = any(
                e.record is not None
                and e.record.evidence.get("rolled_back_because") == DIVERGED_UNDER
                for e in rolled
            )
            plateau = detector.current
            state = DetectorState.DIVERGING if diverged else detector.state
        new = self._diagnose(step, state, series)
        if series == "train":
            events += self.engine.decide(
                step, state, self._current, self.loss_history(), plateau, act=not final
            )
        acted = self._take_events(step, events)
        shown = state if changed and (state in NOTABLE_STATES or before in NOTABLE_STATES) else None
        if not self._lead:
            pass  # rank 0 prints what every rank did
        elif shown is not None or new or acted:
            line = format_event_line(
                step,
                series=series,
                state=shown,
                plateau=plateau,
                findings=new,
                actions=acted,
                lrs=self.hooks.config_lrs() if new else (),
            )
            if line:  # empty when the only news is a symptom whose root is already named
                logger.info(line)
        elif changed:
            logger.debug("step %d %s (%s)", step, state, series)
        return state, new, acted

    def _diagnose(self, step: int, state: str, series: str) -> list[Finding]:
        if self._sync is None:
            findings = self._run_rules(step, state, series)
        else:
            # Rank 0 diagnoses (the rules read rank-local signals); every rank gets its findings.
            findings = self._sync.lead_decides(lambda: self._run_rules(step, state, series))
        # A finding the pending action explains (an LR it raised driving the loss up) is that
        # action's effect, recorded in its evidence and judged by its verdict: not a cause in
        # the user's run, and nothing for the policy to act on.
        findings = [f for f in findings if not self.engine.note_effect(f)]
        self._current = findings
        new = self._finding_log.record(findings, step)
        for finding in new:
            self.record_event("finding", step, finding.to_dict())
        return new

    def _run_rules(self, step: int, state: str, series: str) -> list[Finding]:
        self.hooks.before_rules(step, state, series)
        extra = {
            "detector_state": state,
            "detector_series": series,
            "detector_stats": primitive(self.detectors[series].stats()) if step else {},
            "lr_multiplier": self._lr.value,
            **self.hooks.live_facts(),
        }
        findings = run_rules(
            self._evidence.build(step, extra),
            continuous_only=state not in DIAGNOSE_ON,
            known_roots=self._finding_log.roots(step),
        )
        multiplier = self._lr.value
        stamped = []
        for f in findings:
            changes: dict[str, Any] = {"series": series} if f.series != series else {}
            if multiplier != 1.0:
                # A remedy's LR factor is relative to the LR the run had when found, which
                # unstuck's multiplier was part of: the console turns it into an LR to try.
                changes["evidence"] = {**f.evidence, "lr_multiplier": multiplier}
            stamped.append(dataclasses.replace(f, **changes) if changes else f)
        return stamped

    def _emit(self, step: int, series: str, events: list[EngineEvent]) -> list[ActionRecord]:
        """Record the engine's events and print a console line for the actions among them."""
        acted = self._take_events(step, events)
        if acted and self._lead:
            logger.info(format_event_line(step, series=series, actions=acted))
        return acted

    def _take_events(self, step: int, events: list[EngineEvent]) -> list[ActionRecord]:
        """Store the engine's events; keep ``actions`` current (one entry per action)."""
        for event in events:
            self.record_event(event.kind, step, event.payload)  # its JSON, made once
        return merge_action_events(self._actions, events)

    def _log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        if self.recorder is not None:
            self.recorder.log_metrics(rows)

    def _update(
        self,
        state: DetectorState,
        findings: list[Finding],
        actions: list[ActionRecord],
        next_window: int = 0,
    ) -> Update:
        return Update(state, findings, actions, self.should_stop, next_window)

    # -- snapshots ------------------------------------------------------------------------------
    def _capture_extra(self) -> dict[str, Any]:
        """What decides what happens next, for snapshots: the detectors, and the front-end's own
        state (the engine captures the handles itself)."""
        return {
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            **self.hooks.capture_extra(),
        }

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        """The evidence forgets the undone steps, as the detectors do: the next verdict and the
        rules compare against the restored run, not the branch that was thrown away."""
        for name, state in extra.get("detectors", {}).items():
            self.detectors[name].load_state_dict(state)
        if "evidence_step" in extra:
            self._evidence.forget_after(int(extra["evidence_step"]))
        self.hooks.restore_extra(extra)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to decide as this one would; tensors and primitives."""
        return {
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            "evidence": self._evidence.state_dict(),
            "engine": self.engine.state_dict(),
            **self._finding_log.state_dict(),  # findings, last_found, last_confidence
            "actions": [a.to_dict() for a in self._actions],
            "val_points": self.val_points,
        }

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        """Load :meth:`state_dict`; an action that was pending at the save is judged or undone
        now, at ``step``."""
        for name, det_state in state["detectors"].items():
            self.detectors[name].load_state_dict(det_state)
        self._evidence.load_state_dict(state["evidence"])
        self._finding_log.load_state_dict(state)
        self._actions = [ActionRecord.from_dict(a) for a in state["actions"]]
        self.val_points = int(state.get("val_points", 0))
        self.engine.forget_start()  # a resumed run's start is not this front-end's to restart
        if state.get("engine") is not None:
            interrupted = self.engine.load_state_dict(dict(state["engine"]))
            self._take_events(step, [EngineEvent.outcome(r) for r in interrupted])


class MonitorResults:
    """What every front-end lets its user read, from the Monitor it drives (``self._monitor``):
    one definition, so the Guard and the callbacks cannot drift on it."""

    _monitor: Monitor

    @property
    def state(self) -> DetectorState:
        """The training-loss detector's current state (a ``str``: ``.state == "plateau"``)."""
        return self._monitor.state

    @property
    def plateaus(self) -> list[Plateau]:
        """Every plateau found so far on train and validation loss, by start step."""
        return self._monitor.plateaus

    @property
    def findings(self) -> list[Finding]:
        """Every finding recorded so far, oldest first (a copy)."""
        return self._monitor.findings

    @property
    def actions(self) -> list[ActionRecord]:
        """Every action taken so far; ``outcome`` says whether it was kept or rolled back."""
        return self._monitor.actions

    @property
    def evidence(self) -> EvidenceView:
        """The history diagnosis reads (series and snapshots), read-only."""
        return self._monitor.evidence
