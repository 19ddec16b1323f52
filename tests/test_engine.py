"""The rescue engine: range tests, rollbacks, branch trials, budgets, spills, stops, resumes."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import unstuck
from conftest import ProposeInOrder, regression_batch, tiny_mlp
from unstuck.rescue import (
    Controls,
    Ladder,
    LRMultiplier,
    Proposal,
    RescueEngine,
    SnapshotStore,
    make_policy,
    take_snapshot,
)
from unstuck.rescue.actions.lr_range_test import suggest, sweep_factors
from unstuck.rescue.controls import AccumulationControl
from unstuck.rescue.verify import judge
from unstuck.types import Finding


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class _Loop:
    """A plain loop feeding an engine directly, flushing every ``flush`` steps."""

    def __init__(self, lr=0.05, momentum=0.9, policy=None, **engine_kw):
        torch.manual_seed(0)
        self.model = tiny_mlp()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.lr = LRMultiplier(self.opt)
        self.controls = Controls(self.model, self.opt, self.lr)
        self.engine = RescueEngine(self.controls, policy or ProposeInOrder(), **engine_kw)
        self.step = 0
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.window: list[tuple[int, float]] = []
        self.events: list[tuple[str, dict]] = []

    def batch(self, i):
        return regression_batch(seed=1000 + i)

    def train(self, n, flush=10):
        for _ in range(n):
            x, y = self.batch(self.step)
            loss = F.mse_loss(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.window.append((self.step, float(loss.detach())))
            self.step += 1
            if self.step % flush == 0:
                self.flush()

    def flush(self):
        s = np.array([w[0] for w in self.window])
        v = np.array([w[1] for w in self.window])
        self.window = []
        at = self.step - 1
        if self.engine.probing:
            self.events += self.engine.advance_probe(at, s, v)
            return
        self.steps += list(s)
        self.losses += list(v)
        hist = (np.array(self.steps), np.array(self.losses))
        self.events += self.engine.verify(at, hist)
        self.events += self.engine.maybe_act(at, "plateau", [], hist, "mid", 0)

    def force(self, proposal, then):
        """Have the policy propose ``proposal`` at the next flush, then nothing for ``then``
        steps; the last action outcome (or None)."""
        self.engine.policy = ProposeInOrder(proposal)
        self.train(10)
        self.engine.policy = ProposeInOrder()
        self.train(then)
        outcomes = [e for k, e in self.events if k == "action_outcome"]
        return outcomes[-1] if outcomes else None


# --------------------------------------------------------------------------- verdicts


def test_judge_flags_a_stalled_descent_and_a_higher_level():
    rng = np.random.default_rng(0)
    before_x = np.arange(200.0)
    after_x = np.arange(300.0, 400.0)
    # a slow but real descent (15 % over the window) that the action stalled
    slow = np.exp(-0.0008 * before_x) * np.exp(0.01 * rng.standard_normal(200))
    stalled = np.full(100, slow[-20:].mean()) * np.exp(0.01 * rng.standard_normal(100))
    v = judge(before_x, slow, after_x, stalled)
    assert v.worse and v.projected_change > 0  # slower than the descent it interrupted
    assert not judge(before_x, slow, after_x, stalled, use_trend=False).worse  # level alone
    # a steep descent that goes on falling after the action was not stalled by it, even when
    # it falls more slowly than the projection; one that stops falling was
    steep = np.exp(-0.004 * before_x) * np.exp(0.01 * rng.standard_normal(200))
    slower = np.exp(-0.8 - 0.001 * (after_x - 300)) * np.exp(0.01 * rng.standard_normal(100))
    v = judge(before_x, steep, after_x, slower)
    assert v.projected_change > 0 and not v.worse and v.better
    frozen = np.full(100, steep[-20:].mean()) * np.exp(0.01 * rng.standard_normal(100))
    assert judge(before_x, steep, after_x, frozen).worse
    flat = np.exp(0.02 * rng.standard_normal(200))
    higher = 1.2 * np.exp(0.02 * rng.standard_normal(100))
    assert judge(before_x, flat, after_x, higher).worse
    lower = 0.8 * np.exp(0.02 * rng.standard_normal(100))
    v = judge(before_x, flat, after_x, lower)
    assert v.better and not v.worse
    same = np.exp(0.02 * rng.standard_normal(100))
    v = judge(before_x, flat, after_x, same)
    assert not v.worse and not v.better
    assert judge(before_x, flat, after_x, np.array([1.0, math.nan])).worse


# --------------------------------------------------------------------------- range test


def test_suggest_reads_a_curve_and_falls_back_when_it_is_flat():
    rng = np.random.default_rng(1)
    n = 100
    factors = sweep_factors(1e-2, 1e4, n)
    loss, level = [], 1.0
    for f in factors:
        level *= math.exp(-0.05 * min(f / 10, 1) if f < 1000 else 0.3)
        loss.append(level * math.exp(0.03 * rng.standard_normal()))
    s = suggest(factors, np.array(loss), n)
    assert s.method in ("agreed", "disagreed") and s.factor is not None
    assert 1.0 < s.factor < 1000  # inside the region where the loss falls
    assert s.diverged_at is not None and s.factor <= s.diverged_at / 10
    flat = np.exp(0.03 * rng.standard_normal(n))
    assert suggest(factors, flat, n).factor is None
    assert suggest(factors, flat, n).method == "flat"
    blown = flat.copy()
    blown[70:] = math.nan
    fallback = suggest(factors, blown, n)
    assert fallback.method == "divergence_fallback"
    assert fallback.factor == pytest.approx(factors[70] / 10)


def test_range_test_sweeps_restores_exactly_and_applies_its_suggestion():
    loop = _Loop(lr=1e-3)
    loop.engine.probe_budget = 1.0
    loop.train(100)
    loop.engine.policy = ProposeInOrder(Proposal("lr_range_test", {"steps": 60}))
    seen = []
    loop.opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    loop.train(10)
    assert loop.engine.range_test is not None  # started at the flush of step 109
    at_start = _params(loop.model)
    state_at_start = copy.deepcopy(loop.opt.state_dict())
    rng_at_start = torch.get_rng_state()
    loop.train(70)
    assert loop.engine.range_test is None
    # the sweep ran the exponential ramp over the optimizer steps
    ramp = np.array(seen[10 : 10 + 60]) / 1e-3
    assert ramp == pytest.approx(sweep_factors(1e-2, 1e4, 60)[: ramp.size], rel=1e-6)
    kinds = [(k, e.get("name"), e.get("outcome")) for k, e in loop.events]
    assert ("action_outcome", "lr_range_test", "restored") in kinds
    probe = next(e for k, e in loop.events if k == "probe")
    assert probe["probe"] == "lr_range_test" and len(probe["factors"]) == len(probe["losses"])
    follow = loop.engine.pending
    assert follow is not None and follow.record.name == "lr_scale"
    assert loop.lr.value == pytest.approx(probe["factor"])
    assert follow.record.params["factor"] == pytest.approx(probe["factor"])
    # the restore put back the pre-sweep state bit for bit: replay from a copy to compare
    snap = loop.engine.snapshots.get(follow.snapshot)
    assert _same([snap.model[k] for k in loop.model.state_dict()], at_start)
    assert torch.equal(snap.rng["torch"], rng_at_start)
    for key, state in state_at_start["state"].items():
        for name, value in state.items():
            assert torch.equal(snap.optimizer["state"][key][name], value)


def test_range_test_needs_probe_budget():
    loop = _Loop(policy=ProposeInOrder(Proposal("lr_range_test", {"steps": 60})))
    loop.train(100)  # 10 % of 100 steps = 10 probe steps < 40
    skipped = [e for k, e in loop.events if e.get("outcome") == "skipped"]
    assert skipped and "probe budget" in skipped[0]["evidence"]["skipped_because"]
    assert loop.engine.range_test is None and loop.lr.value == 1.0


# --------------------------------------------------------------------------- rollback


def test_a_harmful_action_is_rolled_back_exactly_and_the_next_steps_replay():
    loop = _Loop(lr=0.05, horizon=40, cooldown=1000)
    loop.train(200)
    loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 300.0}))
    loop.train(10)
    assert loop.engine.pending is not None
    act_step = loop.engine.pending.record.step
    twin_model = copy.deepcopy(loop.model)
    twin_opt = torch.optim.SGD(twin_model.parameters(), lr=0.05, momentum=0.9)
    twin_opt.load_state_dict(copy.deepcopy(loop.opt.state_dict()))
    at_action = _params(loop.model)
    loop.engine.policy = ProposeInOrder()
    outcome: list[dict] = []
    while not outcome and loop.step < act_step + 100:
        loop.train(10)  # one flush at a time: stop right at the verdict
        outcome = [e for k, e in loop.events if k == "action_outcome" and e["step"] == act_step]
    assert outcome and outcome[-1]["outcome"] == "rolled_back"
    assert loop.lr.value == pytest.approx(1.0)
    assert _same(_params(loop.model), at_action)
    for (_, a), (_, b) in zip(
        loop.opt.state_dict()["state"].items(), twin_opt.state_dict()["state"].items()
    ):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # identical following steps on the same batches
    for i in range(5):
        for model, opt in ((loop.model, loop.opt), (twin_model, twin_opt)):
            x, y = regression_batch(seed=5000 + i)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert _same(_params(loop.model), _params(twin_model))


# --------------------------------------------------------------------------- branch trials


_TEACHER = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))


def _teacher_batch(i):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(i))
    return x, x @ _TEACHER


def _teacher_step(model, opt, guard, i):
    """One optimizer step on teacher batch ``i``, reported to the Guard."""
    x, y = _teacher_batch(i)
    loss = F.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    guard.step(loss)


def _scored_loop(lr, candidates, horizon=40):
    loop = _Loop(lr=lr, momentum=0.0, probe_budget=1.0)
    loop.batch = _teacher_batch  # a learnable target: remedies can differ
    loop.train(100)  # the budget is a share of the steps so far
    loop.engine.policy = ProposeInOrder(
        Proposal("branch_trial", {"candidates": candidates, "horizon": horizon})
    )
    probe = [_teacher_batch(10_000 + i) for i in range(4)]
    loop.engine.evaluate = lambda: [float(F.mse_loss(loop.model(x), y).detach()) for x, y in probe]
    return loop


def _trial_outcome(loop):
    return next(
        e for k, e in loop.events if e.get("name") == "branch_trial" and k == "action_outcome"
    )


def test_branch_trial_keeps_a_winner_that_beats_control():
    loop = _scored_loop(
        1e-3,
        [
            {"action": "lr_scale", "params": {"factor": 0.3}},
            {"action": "lr_scale", "params": {"factor": 30.0}},
        ],
    )
    loop.train(10)
    assert loop.engine.branches is not None
    loop.train(3 * 40 + 10)
    outcome = _trial_outcome(loop)
    assert outcome["outcome"] == "kept"
    assert outcome["evidence"]["winner"] == "lr ×30"
    assert "faster than control" in outcome["evidence"]["summary"]
    assert loop.lr.value == pytest.approx(30.0)
    winner = [e for k, e in loop.events if k == "action" and e["name"] == "lr_scale"]
    assert winner and winner[-1]["outcome"] == "kept"
    assert loop.engine.probe_steps == 2 * 40


def test_branch_trial_keeps_control_when_no_remedy_helps():
    loop = _scored_loop(0.05, [{"action": "lr_scale", "params": {"factor": 50.0}}])
    loop.train(10)
    before = _params(loop.model)
    loop.train(40)  # the candidate's branch
    assert loop.engine.branches is not None and loop.engine.branches.index == 1
    assert _same(_params(loop.model), before)  # restored for the control
    loop.train(45)
    outcome = _trial_outcome(loop)
    assert outcome["outcome"] == "control_kept"
    assert loop.lr.value == 1.0


# --------------------------------------------------------------------------- snapshots on disk


def test_snapshot_store_spills_past_its_budget(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters())
    snap = take_snapshot(3, model, opt)
    store = SnapshotStore(0, tmp_path)
    key = store.put(snap)
    files = list(tmp_path.iterdir())
    assert store.spilled == 1 and len(files) == 1
    back = store.get(key)
    assert back.step == 3
    assert all(torch.equal(back.model[k], v) for k, v in snap.model.items())
    store.drop(key)
    assert list(tmp_path.iterdir()) == []
    roomy = SnapshotStore(1 << 30, tmp_path)
    roomy.put(snap)
    assert roomy.spilled == 0 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- guard integration


def _plain_steps(model, opt, guard, start, n, *, val_every=0, val=None):
    for i in range(start, start + n):
        x, y = regression_batch(seed=i)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss, batch=(x, y))
        if val_every and i % val_every == val_every - 1 and val is not None:
            guard.validate(val(i))


def test_closing_inside_a_range_test_restores_the_state_before_it(tmp_path):
    torch.manual_seed(0)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    guard = unstuck.Guard(
        model,
        opt,
        policy=[("lr_range_test", {"steps": 100})],
        run_dir=tmp_path,
        flush_every=25,
        probe_budget=1.0,
        console=False,
        loss_fn=F.mse_loss,
    )
    before = None
    for i in range(1500):
        _plain_steps(model, opt, guard, i, 1)
        if before is None and guard.actions and guard.actions[-1].outcome == "probing":
            before = _params(model)
            stop_at = i + 30
        if before is not None and i >= stop_at:
            break
    assert before is not None, f"no range test started: {guard!r}"
    assert not _same(_params(model), before)  # the sweep moved the weights
    guard.close()
    assert _same(_params(model), before)
    assert guard.actions[-1].outcome == "interrupted"
    spilled = tmp_path / "snapshots"
    assert not spilled.exists() or not list(spilled.iterdir())  # snapshots are cleaned up


def test_resuming_mid_probe_restores_the_state_before_it():
    torch.manual_seed(0)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    kw = {"flush_every": 25, "probe_budget": 1.0, "console": False, "loss_fn": F.mse_loss}
    guard = unstuck.Guard(model, opt, policy=["lr_range_test"], **kw)
    before = None
    for i in range(1500):
        _plain_steps(model, opt, guard, i, 1)
        if guard.actions and guard.actions[-1].outcome == "probing":
            before = _params(model)
            _plain_steps(model, opt, guard, i + 1, 20)
            break
    assert before is not None
    ckpt = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "guard": guard.state_dict()}
    )
    guard.close()
    model2 = tiny_mlp()
    opt2 = torch.optim.SGD(model2.parameters(), lr=1e-6)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    guard2 = unstuck.Guard(model2, opt2, policy=["lr_range_test"], **kw)
    guard2.load_state_dict(ckpt["guard"])
    assert _same(_params(model2), before)
    assert guard2.actions[-1].outcome == "interrupted"
    assert guard2.lr_multiplier == 1.0
    guard2.close()


def test_keep_best_and_stop_restores_the_best_validation_weights():
    """The loss at lr=1e-6 never moves; the first decision (flush_every=200, at step 199) sees a
    plateau and three validation losses, the best at step 99, whose weights come back."""
    torch.manual_seed(0)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    guard = unstuck.Guard(model, opt, policy=["keep_best_and_stop"], flush_every=200, console=False)
    best = {}

    def val(i):
        value = 1.0 if i != 99 else 0.5  # the best validation loss is at step 99
        if i in (99, 149):
            best["params" if i == 99 else "later"] = _params(model)
        return value

    for i in range(3000):
        _plain_steps(model, opt, guard, i, 1, val_every=50, val=val)
        if guard.should_stop:
            break
    assert guard.should_stop, f"never stopped: {guard!r}"
    stop = next(a for a in guard.actions if a.name == "keep_best_and_stop")
    assert stop.step > 99
    assert not _same(best["later"], best["params"])  # the weights did move after the best
    assert _same(_params(model), best["params"])
    guard.close()


def test_owned_accumulation_averages_like_a_divided_loss(tmp_path):
    torch.manual_seed(0)
    model = tiny_mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    guard = unstuck.Guard(
        model, opt, accumulation_steps=2, run_dir=tmp_path, flush_every=10, console=False
    )
    for i in range(40):
        x, y = regression_batch(seed=i)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if guard.should_step():
            opt.step()
            opt.zero_grad()
        guard.step(loss)
        (F.mse_loss(twin(x), y) / 2).backward()
        if i % 2 == 1:
            twin_opt.step()
            twin_opt.zero_grad()
    guard.close()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    skipped = unstuck.record.read_metrics(tmp_path, names=["skipped_steps"])["skipped_steps"][1]
    assert skipped and all(v == 0 for v in skipped)  # accumulation is not a skipped step
    with pytest.raises(ValueError, match="accumulation_steps"):
        AccumulationControl(0)


def test_self_tuning_optimizers_keep_their_lr(caplog):
    schedulefree = pytest.importorskip("schedulefree")
    model = tiny_mlp()
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-3)
    opt.train()
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        guard = unstuck.Guard(model, opt, policy="rescue", console=False)
    assert "sets its own step size" in caplog.text
    controls = Controls(model, opt, LRMultiplier(opt), lr_locked="locked for the test")
    engine = RescueEngine(controls, ProposeInOrder(Proposal("lr_scale", {"factor": 3.0})))
    events = engine.maybe_act(10, "plateau", [], (np.arange(5), np.ones(5)), "mid")
    assert events[0][1]["outcome"] == "skipped"
    assert events[0][1]["evidence"]["skipped_because"] == "locked for the test"
    guard.close()


# --------------------------------------------------------------------------- the ladder


def _finding(cause, action, factor):
    remedy = unstuck.types.Remedy(action, {"factor": factor}, automatic=True)
    return Finding(cause, 0.9, {}, 10, "s", remedies=(remedy,))


def test_ladder_rungs_in_order():
    ladder = Ladder()
    low = [_finding("lr_too_low", "lr_scale", 10.0)]
    first = ladder.propose(step=500, state="plateau", findings=low, tried=frozenset())
    assert first is not None and first.action == "lr_scale" and first.cause == "lr_too_low"
    second = ladder.propose(step=500, state="plateau", findings=low, tried=frozenset({first.key}))
    assert second is not None and second.action == "lr_range_test"
    third = ladder.propose(
        step=500, state="plateau", findings=low, tried=frozenset({first.key, second.key})
    )
    assert third is not None and third.action == "warm_restart"
    done = frozenset({first.key, second.key, third.key})
    assert ladder.propose(step=500, state="plateau", findings=low, tried=done) is None
    # a diverging run: rewind first, then (a repeated spike) cut, then clip, then measure;
    # never raise its LR, no warm restart there either
    tried: frozenset[str] = frozenset()
    rungs = []
    while (p := ladder.propose(step=500, state="diverging", findings=low, tried=tried)) is not None:
        rungs.append((p.action, p.params.get("factor")))
        tried = tried | {p.key}
    assert rungs == [
        ("rewind", None),
        ("lr_scale", 0.5),
        ("clip_adjust", 0.5),
        ("lr_range_test", None),
    ]
    # wait on hidden progress unless a remedy raises the LR; wait within patience
    assert ladder.propose(step=500, state="hidden_progress", findings=[], tried=frozenset()) is None
    patient = Ladder(patience=300)
    assert (
        patient.propose(
            step=500, state="plateau", findings=[], tried=frozenset(), plateau_start=400
        )
        is None
    )
    assert (
        Ladder(fallback="branch_trial")
        .propose(step=500, state="plateau", findings=[], tried=frozenset())
        .action
        == "branch_trial"
    )


@pytest.mark.parametrize("explains", [False, True])
def test_ladder_cuts_during_hidden_progress_only_when_the_finding_explains_the_motion(explains):
    """Adam at too high an LR moves the weights on a flat loss: that motion is no progress to
    wait on when the finding that names the LR says the motion is its symptom, and it still
    says so at the next decision (at the first, the weights may be escaping by themselves)."""
    remedy = unstuck.types.Remedy("lr_scale", {"factor": 0.1}, automatic=True)
    finding = Finding(
        "lr_too_high", 0.7, {"explains_weight_motion": explains}, 10, "s", remedies=(remedy,)
    )
    ladder = Ladder()
    first = ladder.propose(step=49, state="hidden_progress", findings=[finding], tried=frozenset())
    assert first is None
    proposal = ladder.propose(
        step=99, state="hidden_progress", findings=[finding], tried=frozenset()
    )
    assert (proposal is not None and proposal.params == {"factor": 0.1}) is explains
    # a decision that no longer sees it starts the wait again
    ladder.propose(step=149, state="hidden_progress", findings=[], tried=frozenset())
    assert (
        ladder.propose(step=199, state="hidden_progress", findings=[finding], tried=frozenset())
        is None
    )


def test_policies_by_name_and_sequence_errors():
    assert make_policy("branch").fallback == "branch_trial"
    seq = make_policy(["lr_range_test", ("lr_scale", {"factor": 0.5})])
    p = seq.propose(step=1, state="plateau", findings=[], tried=frozenset())
    assert p.action == "lr_range_test"
    p2 = seq.propose(step=1, state="plateau", findings=[], tried=frozenset({p.key}))
    assert p2.action == "lr_scale" and p2.params == {"factor": 0.5}
    assert seq.propose(step=1, state="improving", findings=[], tried=frozenset()) is None
    with pytest.raises(KeyError, match="unknown action"):
        make_policy(["no_such_action"])
    with pytest.raises(ValueError, match="factor"):
        make_policy([("lr_scale", {"factor": -1})])
    with pytest.raises(ValueError, match="policy must be"):
        make_policy("aggressive")


def test_a_capped_lr_change_is_completed_by_verified_follow_ups():
    loop = _Loop(lr=1e-4, momentum=0.0, horizon=40, cooldown=1000)
    loop.batch = _teacher_batch
    loop.train(100)
    # the evidence asked for ×1000 but one action may do ×100: the rest follows once kept
    loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 100.0, "estimate": 1000.0}))
    loop.train(10)
    loop.engine.policy = ProposeInOrder()
    loop.train(120)
    scales = [e for k, e in loop.events if k == "action" and e["name"] == "lr_scale"]
    assert [round(e["params"]["factor"], 6) for e in scales] == [100.0, 10.0]
    assert scales[1]["reason"].startswith("follow-up")
    outcomes = [e["outcome"] for k, e in loop.events if k == "action_outcome"]
    assert outcomes[0] == "kept"
    if outcomes[1:] == ["kept"]:
        assert loop.lr.value == pytest.approx(1000.0)
    # a finished estimate asks for nothing more
    assert len(scales) == 2


def test_a_cut_that_does_not_help_is_rolled_back_and_a_helpful_cut_is_kept():
    # random targets: the loss is a noise floor no LR changes much — a cut there buys nothing
    loop = _Loop(lr=0.01, momentum=0.0, horizon=60, cooldown=1000)
    loop.train(300)
    outcome = loop.force(Proposal("lr_scale", {"factor": 0.5}), then=80)
    assert outcome["outcome"] == "rolled_back"
    assert outcome["evidence"]["rolled_back_because"] == "a cut that did not make the loss better"
    assert loop.lr.value == 1.0
    # far too high an LR on a learnable target: the cut makes the loss clearly better
    high = _Loop(lr=0.6, momentum=0.0, horizon=60, cooldown=1000)
    high.batch = _teacher_batch
    high.train(100)
    kept = high.force(Proposal("lr_scale", {"factor": 0.05}), then=80)
    assert kept["outcome"] == "kept", kept["evidence"]


def _guarded_lr_scale(factor):
    """A tiny MLP under a Guard whose policy forces one ``lr_scale`` by ``factor``."""
    torch.manual_seed(0)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(
        model,
        opt,
        policy=ProposeInOrder(Proposal("lr_scale", {"factor": factor})),
        flush_every=20,
        horizon=60,
        cooldown=10_000,
        console=False,
    )
    return model, opt, guard


@pytest.mark.parametrize("factor", [1000.0, 1e-4])
def test_no_run_ends_worse_than_at_the_first_action(factor):
    """A harmful action forced on a healthy descent is undone: the run ends no worse than it
    was when the action was taken (the bar bench/rescue.py also checks)."""
    model, opt, guard = _guarded_lr_scale(factor)
    probe = [_teacher_batch(20_000 + i) for i in range(4)]

    def eval_loss():
        with torch.no_grad():
            return float(np.mean([F.mse_loss(model(x), y) for x, y in probe]))

    at_action = None
    for i in range(400):
        _teacher_step(model, opt, guard, i)
        if at_action is None and guard.actions:
            at_action = eval_loss()
    guard.close()
    assert at_action is not None and guard.actions[0].outcome == "rolled_back"
    assert eval_loss() <= at_action


def test_a_non_finite_loss_rolls_the_action_back_at_once():
    """No waiting out the horizon on a broken state: the first flush that sees a NaN judges."""
    loop = _Loop(lr=0.05, horizon=200, cooldown=1000)
    loop.train(100)
    at_action = _params(loop.model)
    loop.engine.policy = ProposeInOrder(Proposal("lr_scale", {"factor": 1e8}))
    loop.train(10)
    pending = loop.engine.pending
    assert pending is not None
    loop.engine.policy = ProposeInOrder()
    loop.train(30)
    outcome = [e for k, e in loop.events if k == "action_outcome"]
    assert outcome and outcome[-1]["outcome"] == "rolled_back"
    assert outcome[-1]["evidence"]["rolled_back_because"] == "a non-finite loss"
    assert outcome[-1]["verified_step"] < pending.due
    assert loop.lr.value == pytest.approx(1.0)
    # rolled back to the state the action found (then trained on, finitely)
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())
    assert not _same(_params(loop.model), [torch.full_like(p, math.nan) for p in at_action])


def _cut_for_lr_too_high_after(steps, factor=0.1):
    """A loop that keeps its first state, trains ``steps`` steps, then flushes once with an
    ``lr_too_high`` cut proposed; returns it and its first parameters."""
    loop = _Loop(lr=0.05, horizon=40, cooldown=1000)
    loop.engine.note_start(0)
    initial = _params(loop.model)
    loop.train(steps)
    loop.engine.policy = ProposeInOrder(
        Proposal("lr_scale", {"factor": factor}, cause="lr_too_high")
    )
    loop.train(10)
    assert loop.engine.pending is not None
    return loop, initial


def test_an_early_cut_for_a_far_too_high_lr_restarts_from_the_first_state():
    loop, initial = _cut_for_lr_too_high_after(20)
    assert loop.engine.pending.record.evidence["restarted_from_step"] == 0
    assert _same(_params(loop.model), initial)
    assert loop.opt.state_dict()["state"] == {}  # no momentum yet, as at the start
    assert loop.lr.value == pytest.approx(0.1)


def test_a_restart_that_hurt_rolls_back_to_where_it_was_taken_not_to_the_start():
    loop, initial = _cut_for_lr_too_high_after(20, 0.01)  # from scratch at a tiny LR: worse
    pending = loop.engine.pending
    assert pending.record.evidence["restarted_from_step"] == 0
    found = [t.clone() for t in loop.engine.snapshots.get(pending.snapshot).model.values()]
    assert not _same(found, initial)
    loop.engine.policy = ProposeInOrder()
    outcome: list[dict] = []
    while not outcome:
        loop.train(10)  # one flush at a time: stop right at the verdict
        outcome = [e for k, e in loop.events if k == "action_outcome"]
    assert outcome[-1]["outcome"] == "rolled_back"
    assert loop.lr.value == pytest.approx(1.0)
    assert _same(_params(loop.model), found)  # where the cut was taken, not the start
    assert loop.engine._start_state is None  # a restart is offered once


def test_a_missing_warmup_restarts_from_the_first_state_with_the_ramp_running():
    loop = _Loop(lr=0.05, horizon=40, cooldown=1000)
    loop.engine.note_start(0)
    initial = _params(loop.model)
    loop.train(20)
    loop.engine.policy = ProposeInOrder(Proposal("warmup", {"length": 100}, cause="missing_warmup"))
    loop.train(10)
    pending = loop.engine.pending
    assert pending is not None and pending.record.name == "warmup"
    assert pending.record.evidence["restarted_from_step"] == 0
    # the first state, nine steps into the ramp (the flush that decided is the 30th step)
    assert loop.lr.shape is not None and loop.lr.shape["shape"] == "linear"
    assert loop.lr.current() == pytest.approx(1 / 100)
    assert _same(_params(loop.model), initial)


def test_a_restart_is_judged_on_levels_not_on_the_descent_it_rewound(monkeypatch):
    from unstuck.rescue import engine as engine_module

    seen: list[bool] = []

    def spy(*args, use_trend=True):
        seen.append(use_trend)
        return judge(*args, use_trend=use_trend)

    monkeypatch.setattr(engine_module, "judge", spy)
    for steps, restarted in ((20, True), (60, False)):
        loop, _ = _cut_for_lr_too_high_after(steps)
        assert ("restarted_from_step" in loop.engine.pending.record.evidence) is restarted
        loop.engine.policy = ProposeInOrder()
        loop.train(50)
        assert seen and seen[-1] is (not restarted)


def test_a_cut_after_the_first_horizon_does_not_restart():
    loop, initial = _cut_for_lr_too_high_after(60)
    assert "restarted_from_step" not in loop.engine.pending.record.evidence
    assert not _same(_params(loop.model), initial)


def test_a_rollback_forgets_the_undone_steps_in_the_evidence():
    """Rules and the next verdict read the restored run, not the branch thrown away."""
    model, opt, guard = _guarded_lr_scale(1e8)
    for i in range(300):
        _teacher_step(model, opt, guard, i)
    guard.close()
    raised = guard.actions[0]
    assert raised.outcome == "rolled_back"
    steps, values = guard.evidence.series("loss")
    # the loss of step ``raised.step + 1`` was computed before the changed LR took its first step
    undone = (steps > raised.step + 1) & (steps <= raised.verified_step)
    assert steps.size and not undone.any()
    assert np.isfinite(values).all()  # the NaNs of the undone steps are gone with them
    assert (steps > raised.verified_step).any()  # and the run's own steps after are kept


def test_a_branch_trial_whose_snapshot_no_longer_fits_fails_in_one_line(caplog):
    """The model changed shape mid-trial (issue 21): the trial ends ``failed`` with the reason,
    its LR change is undone, nothing raises, and later flushes run."""
    loop = _scored_loop(
        1e-3,
        [
            {"action": "lr_scale", "params": {"factor": 0.3}},
            {"action": "lr_scale", "params": {"factor": 30.0}},
        ],
    )
    loop.train(10)
    assert loop.engine.branches is not None
    loop.model.register_buffer("grown", torch.zeros(3))
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        loop.train(3 * 40 + 10)
    outcome = _trial_outcome(loop)
    assert outcome["outcome"] == "failed"
    assert (
        "could not roll back: the model's tensors changed" in outcome["evidence"]["failed_because"]
    )
    assert loop.engine.branches is None and loop.lr.value == pytest.approx(1.0)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
