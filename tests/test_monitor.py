"""The Monitor is the pipeline every front-end drives: these tests drive it directly, with a
window of signals at a time, and pin the four behaviours that once differed between the Guard
and the Keras callback (docs/guard.md, "One pipeline for every front-end")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from conftest import ProposeInOrder, tiny_mlp
from unstuck.core import FrontEndHooks, Monitor
from unstuck.rescue import Controls, LRMultiplier
from unstuck.rescue.engine import DIVERGED_UNDER
from unstuck.rescue.policy import Proposal
from unstuck.signals.host import Frame, Series

FLUSH = 50


class _Recorder:
    """Keeps what the Monitor records, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self.rows: list[tuple[str, int, float]] = []

    def log_event(self, kind: str, step: int, payload: Any) -> None:
        self.events.append((kind, step, dict(payload)))

    def log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        self.rows += rows

    def flush(self, *, wait: bool) -> None:
        pass


def _monitor(policy: Any = "observe", hooks: FrontEndHooks | None = None) -> tuple[Monitor, Any]:
    from unstuck.rescue import make_policy

    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lr = LRMultiplier(optimizer)
    controls = Controls(model, optimizer, lr)
    recorder = _Recorder()
    monitor = Monitor(
        controls,
        make_policy(policy) if isinstance(policy, str) else policy,
        recorder,  # type: ignore[arg-type]
        flush_every=FLUSH,
        engine_options={"horizon": 100, "cooldown": 0},
        # No parameter distance in these windows: without this the detector cannot rule out
        # hidden progress and keeps a flat loss at "slow".
        detector_options={"distance_signal": False},
        hooks=hooks,
    )
    monitor.start(0)
    return monitor, recorder


def _flat_then(monitor: Monitor, windows: int, start: int = 0, level: float = 0.7):
    """Feed ``windows`` windows of a loss flat from the start, with 2 % noise: the detector
    calls it a plateau within 40 windows (tests/test_detect.py has the same curve)."""
    rng = np.random.default_rng(start)
    update = None
    for w in range(start, start + windows):
        steps = list(range(w * FLUSH, (w + 1) * FLUSH))
        values = [level * math.exp(0.02 * rng.standard_normal()) for _ in steps]
        update = monitor.observe(steps[-1], Frame(steps[-1] + 1, {"loss": Series(steps, values)}))
    return update


def test_a_window_records_its_series_and_asks_for_the_next_one():
    monitor, recorder = _monitor()
    update = _flat_then(monitor, 1)
    assert update is not None and update.next_window == FLUSH
    assert sum(1 for name, _, _ in recorder.rows if name == "loss") == FLUSH
    assert [row for row in recorder.rows if row[0] == "lr_multiplier"] == [
        ("lr_multiplier", 49, 1.0)
    ]
    assert monitor.evidence.series("loss")[0].size == FLUSH


def test_the_state_change_is_recorded_before_what_the_engine_did_in_its_window():
    policy = ProposeInOrder(Proposal("lr_scale", {"factor": 2.0}, reason="test"))
    monitor, recorder = _monitor(policy)
    _flat_then(monitor, 1)
    at_49 = [kind for kind, step, _ in recorder.events if step == 49]
    assert "state" in at_49 and "action" in at_49
    assert at_49.index("state") < at_49.index("action"), at_49


def test_a_flat_loss_is_a_plateau_with_its_state_recorded():
    monitor, recorder = _monitor()
    _flat_then(monitor, 40)
    assert monitor.state == "plateau", monitor.state
    assert any(k == "state" and p["to"] == "plateau" for k, _, p in recorder.events)
    assert monitor.plateaus and monitor.plateaus[0].series == "train"


def test_no_action_starts_on_the_final_window():
    # This policy proposes at every decision, so the first window is enough.
    policy = ProposeInOrder(Proposal("lr_scale", {"factor": 2.0}, reason="test"))
    steps = list(range(FLUSH))
    window = Frame(FLUSH, {"loss": Series(steps, [1.0] * FLUSH)})
    last, _ = _monitor(policy)
    final = last.observe(steps[-1], window, final=True)
    assert final.actions == [] and last.actions == []

    going_on, _ = _monitor(policy)
    update = going_on.observe(steps[-1], window)
    assert [a.name for a in update.actions] == ["lr_scale"]


def test_validation_losses_are_diagnosed_too():
    seen: list[str] = []
    hooks = FrontEndHooks(before_rules=lambda step, state, series: seen.append(series))
    monitor, recorder = _monitor(hooks=hooks)
    _flat_then(monitor, 2)
    seen.clear()
    for i, value in enumerate([1.0, 1.1, 1.2]):
        monitor.validate(100 + i, value)
    assert seen == ["val", "val", "val"]
    assert [row for row in recorder.rows if row[0] == "val_loss"] == [
        ("val_loss", 100, 1.0),
        ("val_loss", 101, 1.1),
        ("val_loss", 102, 1.2),
    ]
    assert monitor.val_points == 3


def test_what_it_hands_out_are_copies():
    monitor, _ = _monitor()
    _flat_then(monitor, 40)
    findings, plateaus, actions = monitor.findings, monitor.plateaus, monitor.actions
    findings.clear()
    plateaus.clear()
    actions.append(None)  # type: ignore[arg-type]
    assert monitor.plateaus and monitor.actions == []
    assert monitor.findings == monitor.findings  # unchanged by the caller's clear()
    starts = [p.start for p in monitor.plateaus]
    assert starts == sorted(starts)


def test_a_rollback_restores_the_detectors_and_forgets_the_undone_evidence():
    monitor, _ = _monitor()
    _flat_then(monitor, 4)
    extra = monitor._capture_extra()
    before = monitor.detectors["train"].state_dict()
    _flat_then(monitor, 3, start=4, level=5.0)
    monitor._restore_extra({**extra, "evidence_step": 4 * FLUSH})
    assert monitor.detectors["train"].state_dict() == before
    assert monitor.evidence.series("loss")[0].max() <= 4 * FLUSH


def test_its_state_round_trips():
    monitor, _ = _monitor()
    _flat_then(monitor, 40)
    state = monitor.state_dict()
    again, _ = _monitor()
    again.load_state_dict(state, step=40 * FLUSH)
    assert again.state == monitor.state
    assert [f.cause for f in again.findings] == [f.cause for f in monitor.findings]
    assert again.plateaus == monitor.plateaus


def test_the_last_good_check_reads_the_window_it_was_measured_on_not_the_rollback():
    """A window whose action is rolled back is judged healthy or not on the state its own
    losses gave, not on the state the rollback put back (the losses are the undone branch's)."""
    policy = ProposeInOrder(Proposal("lr_scale", {"factor": 2.0}, reason="test"))
    monitor, _ = _monitor(policy)
    calls: list[tuple[int, str]] = []
    real = monitor.engine.note_healthy

    def spy(step: int, state: str, *args: Any, **kwargs: Any) -> None:
        calls.append((step, str(state)))
        real(step, state, *args, **kwargs)

    monitor.engine.note_healthy = spy  # type: ignore[method-assign]
    _flat_then(monitor, 1)  # the action starts at step 49
    # the loss climbs ×10 over the next window: a divergence confirmed under the action,
    # judged at once (step 99), not at its horizon
    steps = list(range(FLUSH, 2 * FLUSH))
    values = [0.7 * 10.0 ** (1 + i / FLUSH) for i in range(FLUSH)]
    detector = monitor.detectors["train"]
    update = monitor.observe(steps[-1], Frame(steps[-1] + 1, {"loss": Series(steps, values)}))
    record = monitor.actions[0]
    assert record.outcome == "rolled_back" and record.verified_step == 99
    assert record.evidence["rolled_back_because"] == DIVERGED_UNDER
    judged_state = dict(calls)[99]
    assert judged_state == "diverging" == str(update.state)  # what is answered next
    assert judged_state != str(detector.state), calls  # the rollback put the detector back
