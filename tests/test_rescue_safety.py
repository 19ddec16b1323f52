"""Rescue that does no harm (issue 20): probes stop before a blow-up, the ladder stops at a cause
it cannot fix, an action's own effect is not a cause, undecided verdicts keep nothing, an action
on a rising loss is judged at its level, and a divergence returns to the last good state."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import unstuck
from conftest import ProposeInOrder
from unstuck.rescue import Controls, Ladder, LRMultiplier, Policy, Proposal, RescueEngine
from unstuck.rescue import engine as engine_module
from unstuck.rescue.actions.lr_range_test import diverged
from unstuck.rescue.policy import range_test_params, reports_only
from unstuck.rescue.verify import judge
from unstuck.types import Finding, Remedy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


# ------------------------------------------------------------------------- probe safety


def test_the_sweep_stops_on_a_blow_up_while_the_loss_is_still_finite():
    flat = list(np.exp(0.02 * np.random.default_rng(0).standard_normal(30)))
    assert not diverged(np.array(flat), 100)
    # a blow-up that grows 30× a step: the raw median reaches 4× the best at once, the EMA alone
    # (fastai's smoothed rule) lags behind it
    blowing = [*flat, 30.0, 900.0, 27_000.0]
    stops = [i for i in range(len(flat), len(blowing) + 1) if diverged(np.array(blowing[:i]), 100)]
    assert stops and stops[0] <= len(flat) + 2
    assert diverged(np.array([*flat, math.nan]), 100)
    # one noisy batch at 5× is not a blow-up: the median of three ignores it
    assert not diverged(np.array([*flat, 5.0, 1.0]), 100)


def _linear_run(read_every: int | None, monkeypatch) -> tuple[list[float], unstuck.Guard]:
    """SGD on a noisy linear regression; a range test forced up to ×1e30 (5× a step)."""
    if read_every is not None:
        monkeypatch.setattr(engine_module, "PROBE_FLUSH", read_every)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(
        model,
        opt,
        policy=ProposeInOrder(Proposal("lr_range_test", {"steps": 100, "low": 1e-2, "high": 1e30})),
        probe_budget=1.0,
        flush_every=25,
        console=False,
    )
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    losses = []
    for i in range(300):
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(100 + i))
        noise = 0.5 * torch.randn(32, 1, generator=torch.Generator().manual_seed(9000 + i))
        loss = F.mse_loss(model(x), x @ w + noise)  # a noise floor: the loss stays > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss)
        losses.append(float(loss.detach()))
    guard.close()
    return losses, guard


def test_a_range_test_never_shows_the_loop_a_non_finite_loss(monkeypatch):
    """Read after every step, the sweep ends and restores before the loss overflows; read
    every 10 steps (the old cadence) the same sweep hands the loop non-finite losses."""
    logging.getLogger("unstuck").setLevel(logging.WARNING)
    losses, guard = _linear_run(None, monkeypatch)
    sweeps = [a for a in guard.actions if a.name == "lr_range_test" and a.outcome != "skipped"]
    assert sweeps and sweeps[0].outcome == "restored"
    assert sweeps[0].evidence["diverged_at"] is not None  # it did meet the blow-up
    assert sweeps[0].evidence["nonfinite_losses"] == 0
    assert all(math.isfinite(v) for v in losses)
    old, _ = _linear_run(10, monkeypatch)
    assert not all(math.isfinite(v) for v in old)


def test_non_finite_probe_losses_are_counted():
    engine, _ = _engine(ProposeInOrder(Proposal("lr_range_test", {"steps": 60})))
    engine.maybe_act(999, "plateau", [], (np.arange(1000), np.ones(1000)))
    assert engine.range_test is not None
    events = engine.advance_probe(1003, np.arange(1000, 1004), np.array([1.0, 1.0, 1.0, math.inf]))
    assert engine.range_test is None and engine.probe_nonfinite == 1
    record = next(e for k, e in events if k == "action_outcome")
    assert record["evidence"]["nonfinite_losses"] == 1


def test_sweep_bounds_follow_the_state():
    assert range_test_params("plateau")["steps"] == 100
    assert range_test_params("plateau").get("high", 1e4) == 1e4
    # a flat plateau with no diagnosed cause is swept upwards only: no blind cut
    assert range_test_params("plateau")["low"] >= 1.0
    proposal = Ladder().propose(step=500, state="plateau", findings=[], tried=frozenset())
    assert proposal is not None and proposal.action == "lr_range_test"
    assert proposal.params["low"] >= 1.0
    for state in ("oscillating", "diverging"):
        params = range_test_params(state)
        assert params["high"] <= 1.0 < 1e4  # no sweep above the LR that already oscillates
    proposal = Ladder().propose(step=500, state="oscillating", findings=[], tried=frozenset())
    assert proposal is not None and proposal.action == "lr_range_test"
    assert proposal.params["high"] <= 1.0


def _engine(policy: Policy | None = None, **kw) -> tuple[RescueEngine, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    controls = Controls(model, opt, LRMultiplier(opt))
    return RescueEngine(controls, policy or ProposeInOrder(), probe_budget=1.0, **kw), model


def test_no_probe_starts_on_a_non_finite_loss():
    engine, _ = _engine(ProposeInOrder(Proposal("lr_range_test", {"steps": 60})))
    steps = np.arange(1000)
    values = np.ones(1000)
    values[-3] = math.nan
    events = engine.maybe_act(999, "plateau", [], (steps, values))
    assert engine.range_test is None
    assert events and "non-finite" in events[0][1]["evidence"]["skipped_because"]
    engine.tried.clear()  # a new plateau: the same proposal on finite losses starts
    engine.maybe_act(999, "plateau", [], (steps, np.ones(1000)))
    assert engine.range_test is not None


# ------------------------------------------------------------------ act on the diagnosis


def _finding(cause: str, confidence: float, *remedies: Remedy) -> Finding:
    return Finding(cause, confidence, {}, 10, f"{cause} summary", remedies=remedies)


VANISHING = _finding("vanishing_gradients", 0.92, Remedy("change_architecture", note="ReLU"))
LR_LOW = _finding("lr_too_low", 0.6, Remedy("lr_scale", {"factor": 10.0}, automatic=True))


def test_the_ladder_reports_a_cause_it_cannot_fix_and_does_not_measure_past_it():
    ladder = Ladder()
    assert reports_only(VANISHING) and not reports_only(LR_LOW)
    for state in ("plateau", "oscillating", "diverging"):
        assert (
            ladder.propose(step=900, state=state, findings=[VANISHING], tried=frozenset()) is None
        )
    # a lower-ranked automatic remedy does not override it either
    assert (
        ladder.propose(step=900, state="plateau", findings=[VANISHING, LR_LOW], tried=frozenset())
        is None
    )
    # ranked above it, an automatic remedy is still tried; once tried, the ladder stops there
    first = ladder.propose(
        step=900, state="plateau", findings=[LR_LOW, VANISHING], tried=frozenset()
    )
    assert first is not None and first.cause == "lr_too_low"
    tried = frozenset({first.key})
    assert (
        ladder.propose(step=900, state="plateau", findings=[LR_LOW, VANISHING], tried=tried) is None
    )
    # a remedy that asks for a measurement is not a report: the ladder measures
    measure = _finding("lr_too_low", 0.7, Remedy("lr_range_test"))
    assert ladder.propose(
        step=900, state="plateau", findings=[measure], tried=frozenset()
    ).action == ("lr_range_test")
    # below MIN_CONFIDENCE a finding reports nothing and stops nothing
    weak = _finding("vanishing_gradients", 0.3, Remedy("change_architecture"))
    assert ladder.propose(step=900, state="plateau", findings=[weak], tried=frozenset()) is not None


def test_deep_sigmoid_walk_through_ends_with_the_vanishing_gradient_report_and_no_sweep():
    """The issue's walk-through: a new user's 8-layer sigmoid network under Adam with
    policy="rescue". vanishing_gradients goes on record and the ladder neither sweeps nor
    raises the LR (before this change, it swept the LR and raised it from the curve)."""
    from scenarios._common import digits, mlp

    logging.getLogger("unstuck").setLevel(logging.WARNING)
    data = digits(0)
    torch.manual_seed(0)
    model = mlp(64, 64, 10, depth=8, activation=torch.nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    guard = unstuck.Guard(model, opt, policy="rescue", loss_fn=F.cross_entropy, console=False)
    gen = torch.Generator().manual_seed(0)
    n = data.x.shape[0]
    for step in range(1200):
        idx = torch.randint(0, n, (32,), generator=gen)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss, batch=(data.x[idx], data.y[idx]))
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                guard.validate(F.cross_entropy(model(data.x_val), data.y_val))
    guard.close()
    on_record: dict[str, float] = {}
    for f in guard.findings:  # every finding made, highest confidence per cause
        on_record[f.cause] = max(on_record.get(f.cause, 0.0), f.confidence)
    assert on_record.get("vanishing_gradients", 0.0) >= 0.5, on_record
    names = [a.name for a in guard.actions if a.outcome != "skipped"]
    assert "lr_range_test" not in names and "warm_restart" not in names, names
    assert not [a for a in guard.actions if a.name == "lr_scale" and a.params["factor"] > 1]
    assert "lr_too_high" not in on_record  # nothing raised the LR to cause one


def test_a_finding_the_pending_action_explains_is_its_effect_not_a_cause():
    engine, _ = _engine(ProposeInOrder(Proposal("lr_scale", {"factor": 100.0})))
    steps = np.arange(300)
    engine.maybe_act(299, "plateau", [], (steps, np.ones(300)))
    assert engine.pending is not None
    high = _finding("lr_too_high", 0.6, Remedy("lr_scale", {"factor": 0.1}, automatic=True))
    assert engine.note_effect(high)
    assert engine.pending.record.evidence["effects"] == {"lr_too_high": 0.6}
    assert not engine.note_effect(VANISHING)  # a raise does not explain vanishing gradients
    # a cut explains no blow-up: the finding stays a cause
    cut, _ = _engine(ProposeInOrder(Proposal("lr_scale", {"factor": 0.1})))
    cut.maybe_act(299, "plateau", [], (steps, np.ones(300)))
    assert not cut.note_effect(high)


def test_a_verdict_that_cannot_decide_keeps_nothing():
    engine, model = _engine(
        ProposeInOrder(Proposal("warm_restart", {"peak": 3.0, "end": 1.0, "length": 50})),
        horizon=50,
    )
    before = [p.detach().clone() for p in model.parameters()]
    engine.maybe_act(0, "plateau", [], (np.array([0]), np.array([1.0])))  # one point before
    assert engine.pending is not None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the action's steps changed the weights
    steps = np.arange(0, 60)
    events = engine.verify(59, (steps, np.ones(60)))
    outcome = next(e for k, e in events if k == "action_outcome")
    assert math.isinf(outcome["evidence"]["verdict_stderr"])
    assert outcome["outcome"] == "rolled_back"
    assert "could not decide" in outcome["evidence"]["rolled_back_because"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --------------------------------------------------------------- spikes and divergence


def test_an_action_on_a_rising_loss_is_judged_at_the_level_it_found():
    rng = np.random.default_rng(3)
    xb = np.arange(200.0)
    good = np.ones(150)
    rise = np.linspace(1.0, 2.0, 50)
    before = np.concatenate([good, rise]) * np.exp(0.01 * rng.standard_normal(200))
    xa = np.arange(300.0, 400.0)
    stopped = 1.9 * np.exp(0.01 * rng.standard_normal(100))  # the rise stopped, near its top
    v = judge(xb, before, xa, stopped)
    assert v.rising and not v.worse
    assert judge(xb, before, xa, stopped, use_trend=False).worse  # the window's mean says worse
    going_on = 3.0 * np.exp(0.01 * rng.standard_normal(100))  # still rising past the action
    assert judge(xb, before, xa, going_on).worse


def test_a_divergence_after_a_kept_rescue_returns_to_the_last_good_state():
    engine, model = _engine(
        ProposeInOrder(Proposal("lr_scale", {"factor": 0.5}, cause="lr_too_high"))
    )
    steps = np.arange(600)
    good_loss = np.full(600, 0.5)
    engine.note_healthy(599, "improving", True, level=0.5)
    good = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)  # the run blows up later
    diverging = np.concatenate([good_loss, np.full(100, 40.0)])
    events = engine.maybe_act(699, "diverging", [], (np.arange(700), diverging))
    record = next(e for k, e in events if k == "action")
    assert record["evidence"]["restored_last_good_step"] == 599
    assert all(torch.equal(a, b) for a, b in zip(good, model.parameters(), strict=True))
    # its verdict compares with the loss before the good state, not with the blow-up
    assert float(engine.pending.before.max()) == pytest.approx(0.5)
    # a run whose loss is below the last good one's stays where it is
    engine2, model2 = _engine(
        ProposeInOrder(Proposal("lr_scale", {"factor": 0.5}, cause="lr_too_high"))
    )
    engine2.note_healthy(599, "improving", True, level=0.5)
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(0.1)
    now = [p.detach().clone() for p in model2.parameters()]
    events = engine2.maybe_act(699, "diverging", [], (np.arange(700), np.full(700, 0.3)))
    record = next(e for k, e in events if k == "action")
    assert "restored_last_good_step" not in record["evidence"]
    assert all(torch.equal(a, b) for a, b in zip(now, model2.parameters(), strict=True))
    del steps


def test_a_kept_verdict_refreshes_the_last_good_state():
    engine, _ = _engine(ProposeInOrder(Proposal("lr_scale", {"factor": 2.0})), horizon=40)
    hist = (np.arange(300), np.ones(300))
    engine.maybe_act(299, "plateau", [], hist)
    later = (np.arange(360), np.concatenate([np.ones(300), np.full(60, 0.5)]))
    events = engine.verify(359, later)
    assert [e["outcome"] for k, e in events if k == "action_outcome"] == ["kept"]
    assert engine._last_good is not None and engine._last_good_step == 359
    assert engine._last_good_level == pytest.approx(0.5 * 50 / 50)


# ------------------------------------------------------------- restarts, refuted, ending


def _restarted_cut(lr, momentum, factor):
    """A teacher-regression loop that keeps its first state, trains 40 steps, and has an
    ``lr_too_high`` cut by ``factor`` proposed at its flush of step 49 (a restart)."""
    from test_engine import _Loop, _teacher_batch

    loop = _Loop(lr=lr, momentum=momentum, horizon=200, cooldown=1000)
    loop.batch = _teacher_batch
    loop.engine.note_start(0)
    loop.train(40)
    loop.engine.policy = ProposeInOrder(
        Proposal("lr_scale", {"factor": factor}, cause="lr_too_high")
    )
    loop.train(10)
    pending = loop.engine.pending
    assert pending is not None and pending.record.evidence["restarted_from_step"] == 0
    assert pending.record.evidence["restart_compare_steps"] == 49
    assert pending.due == 49 + 49  # not 49 + the 200-step horizon
    loop.engine.policy = ProposeInOrder()
    loop.train(60)
    outcomes = [e for k, e in loop.events if k == "action_outcome"]
    assert outcomes and outcomes[-1]["verified_step"] < 49 + 200
    return loop, outcomes[-1]


def test_a_restarted_cut_is_judged_against_the_unchanged_run_at_the_same_steps():
    """A healthy descent cut ×0.01 from its first state is slower than the unchanged run was
    at the same steps from the start: rolled back after 49 steps, not after a horizon. A far
    too high LR cut from the start is better than the unchanged run there: kept."""
    loop, outcome = _restarted_cut(lr=0.05, momentum=0.9, factor=0.01)
    assert outcome["outcome"] == "rolled_back" and loop.lr.value == 1.0
    loop, outcome = _restarted_cut(lr=1.0, momentum=0.0, factor=0.05)
    assert outcome["outcome"] == "kept", outcome["evidence"]


def test_a_remedy_rolled_back_for_a_cause_is_not_retried_for_it():
    from test_engine import _Loop

    loop = _Loop(lr=0.01, momentum=0.0, horizon=60, cooldown=1000)
    loop.train(300)  # random targets: a noise floor no cut improves
    first = loop.force(Proposal("lr_scale", {"factor": 0.5}, cause="lr_too_high"), then=80)
    assert first["outcome"] == "rolled_back"
    # the same cause asks for another cut: skipped, with the step it was refuted at
    loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 0.3}, cause="lr_too_high"))
    loop.train(20)
    skipped = [e for k, e in loop.events if k == "action" and e["outcome"] == "skipped"]
    assert (
        skipped
        and f"rolled back at step {first['step']}" in (skipped[-1]["evidence"]["skipped_because"])
    )
    assert loop.engine.pending is None and loop.lr.value == 1.0
    # another cause may still ask for it
    loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 0.4}, cause="dead_relu"))
    loop.train(10)
    assert loop.engine.pending is not None
    assert loop.engine.state_dict()["refuted"] == {"lr_too_high:lr_scale": first["step"]}


def test_at_the_end_a_cut_that_did_not_help_is_not_thrown_away():
    """An idle cut is rolled back mid-run (its cost comes later); when the run ends there is
    no later, and the rollback would only throw away the steps since the cut."""
    from test_engine import _Loop

    loop = _Loop(lr=0.01, momentum=0.0, horizon=200, cooldown=1000)
    loop.train(300)
    loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 0.5}))
    loop.train(10)
    loop.engine.policy = ProposeInOrder()
    loop.train(100)
    hist = (np.array(loop.steps), np.array(loop.losses))
    events = loop.engine.finish(loop.step - 1, hist)
    outcome = next(e for k, e in events if k == "action_outcome")
    assert outcome["outcome"] == "kept", outcome["evidence"]
    assert loop.lr.value == pytest.approx(0.5)


def test_a_raise_that_made_the_loss_better_is_continued_by_half_its_decades():
    """An LR too low: the raise the evidence sized (×10) is kept better, so a further ×√10
    follows, verified again (bold driver), instead of stopping at the one sized factor."""
    from test_engine import _Loop, _teacher_batch

    def run(cause):
        loop = _Loop(lr=2e-3, momentum=0.0, horizon=40, cooldown=1000)
        loop.batch = _teacher_batch
        loop.train(100)
        loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 10.0}, cause=cause))
        loop.train(10)
        loop.engine.policy = ProposeInOrder()
        loop.train(100)
        return loop

    loop = run("lr_too_low")
    scales = [e for k, e in loop.events if k == "action" and e["name"] == "lr_scale"]
    outcomes = [e for k, e in loop.events if k == "action_outcome"]
    assert outcomes[0]["outcome"] == "kept" and outcomes[0]["evidence"]["verdict_better"]
    assert len(scales) >= 2 and scales[1]["reason"].startswith("continue")
    assert scales[1]["params"]["factor"] == pytest.approx(10**0.5, rel=1e-5)
    assert scales[1]["evidence"]["cause"] == "lr_too_low"
    # a raise for no named cause (a range test's) is not continued
    plain = run(None)
    assert len([e for k, e in plain.events if k == "action"]) == 1
