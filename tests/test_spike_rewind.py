"""Loss-spike rewind: the ring of good states, the rewind past a spike, the skip, escalation."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import unstuck
from conftest import ProposeInOrder
from unstuck.detect.detector import RECENT_FRACTION
from unstuck.rescue import Controls, LRMultiplier, Proposal, RescueEngine
from unstuck.rescue.controls import SkipControl
from unstuck.rescue.engine import DIVERGED_UNDER
from unstuck.rescue.policy import Ladder
from unstuck.rescue.snapshot_book import GOOD_RING, LAST_GOOD_EVERY, ring_every

FLUSH = 10


def _engine(policy, skip_owned=True):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    skip = SkipControl()
    skip.owned = skip_owned
    controls = Controls(model, opt, LRMultiplier(opt), skip=skip)
    return RescueEngine(controls, policy, probe_budget=1.0), model, skip


def _spike_run(engine, model, onset, confirm, good=1.0, high=5.0):
    """Healthy flushes every FLUSH steps up to ``confirm``; from ``onset`` on the loss is
    ``high`` but the detector has not confirmed it yet (still ``improving``), and the weights
    move every flush, so each flush's state is told apart by the first weight."""
    steps = np.arange(confirm + 1)
    values = np.where(steps < onset, good, high).astype(float)
    for step in range(FLUSH - 1, confirm + 1, FLUSH):
        with torch.no_grad():
            model.weight[0, 0] = float(step)
        window = values[max(step - FLUSH + 1, 0) : step + 1]
        engine.note_healthy(step, "improving", True, level=float(window.mean()))
    return steps, values


def test_the_ring_spans_the_detectors_recent_window():
    for step in (100, 1_000, 5_000):
        span = (len(GOOD_RING) - 1) * ring_every(step)
        assert span >= RECENT_FRACTION * step  # the state before a rise is still held
    assert ring_every(10**7) == LAST_GOOD_EVERY  # bounded cadence on very long runs


def test_the_pre_spike_state_is_still_held_at_confirmation_and_the_rewind_returns_to_it():
    engine, model, skip = _engine(ProposeInOrder(Proposal("rewind")))
    onset, confirm = 2_000, 2_150  # the detector confirms 150 steps into the spike
    steps, values = _spike_run(engine, model, onset, confirm)
    held = engine.kept.held_good()
    assert len(held) == len(GOOD_RING) and min(held) < onset  # a pre-spike state survives
    assert max(held) >= onset  # ... though newer ones were taken inside the spike
    events = engine.maybe_act(confirm, "diverging", [], (steps, values))
    record = next(e for k, e in events if k == "action")
    back = record["evidence"]["restored_last_good_step"]
    assert back < onset  # past the spike, not merely to the latest healthy flush
    assert back == max(s for s in held if s < onset)  # the newest from before it
    assert float(model.weight[0, 0].detach()) == back  # the weights are that state's
    assert record["params"]["skip"] == confirm - back  # the data since then is skipped
    assert skip.remaining == confirm - back
    assert engine.pending is not None  # verified like every action
    assert float(engine.pending.before.max()) == 1.0  # against the loss before the good state
    # the states taken inside the thrown-away spike are gone from the ring
    assert all(s <= back for s in engine.kept.held_good())


def test_a_rewind_without_a_good_state_below_the_loss_is_skipped():
    engine, model, _ = _engine(ProposeInOrder(Proposal("rewind")))
    steps, _ = _spike_run(engine, model, onset=0, confirm=300)  # high from the start
    events = engine.maybe_act(300, "diverging", [], (steps, np.full(301, 0.5)))
    record = next(e for k, e in events if k == "action")
    assert record["outcome"] == "skipped"
    assert "no good state" in record["evidence"]["skipped_because"]


def test_a_loop_that_does_not_ask_still_gets_the_rewind_without_a_skip():
    engine, model, skip = _engine(ProposeInOrder(Proposal("rewind")), skip_owned=False)
    steps, values = _spike_run(engine, model, 2_000, 2_150)
    events = engine.maybe_act(2_150, "diverging", [], (steps, values))
    record = next(e for k, e in events if k == "action")
    assert record["evidence"]["restored_last_good_step"] < 2_000
    assert record["evidence"]["skip_owned"] is False and skip.remaining == 0


def test_skip_control_counts_the_batches_down():
    skip = SkipControl()
    assert skip.take() is False and skip.owned  # asking makes it owned
    skip.set(2)
    assert [skip.take() for _ in range(3)] == [True, True, False]


def test_a_repeated_spike_escalates_to_a_cut_then_clipping_not_another_rewind():
    ladder = Ladder()
    engine, model, _ = _engine(ladder)
    steps, values = _spike_run(engine, model, 2_000, 2_150)
    events = engine.maybe_act(2_150, "diverging", [], (steps, values))
    assert [e["name"] for k, e in events if k == "action"] == ["rewind"]
    # the rewind's verdict: the spike came back (a non-finite loss after it) -> rolled back
    after = np.concatenate([values, np.full(50, math.nan)])
    events = engine.verify(2_200, (np.arange(after.size), after))
    assert [e["outcome"] for k, e in events if k == "action_outcome"] == ["rolled_back"]
    names = []
    for step in (2_210, 2_220):
        hist = (np.arange(step + 1), np.full(step + 1, 5.0))
        events = engine.maybe_act(step, "diverging", [], hist)
        acted = [e for k, e in events if k == "action"]
        names += [(e["name"], e["outcome"]) for e in acted]
        if engine.pending is not None:  # judge the cut at once: it did not help
            engine.pending.due = step
            engine.verify(step, (np.arange(step + 1), np.full(step + 1, 5.0)))
    assert names[0] == ("lr_scale", "pending")  # the cut, not a second rewind
    assert ("clip_adjust", "skipped") in names  # next the clip (needs guard.clip_grad_norm_)
    assert all(name != "rewind" for name, _ in names)


def test_a_divergence_confirmed_under_a_pending_action_rolls_it_back_before_its_horizon():
    engine, model, _ = _engine(ProposeInOrder(Proposal("lr_scale", {"factor": 0.5})))
    steps, values = _spike_run(engine, model, onset=2_000, confirm=2_050)
    engine.maybe_act(2_050, "oscillating", [], (steps, values))  # the rise not yet confirmed
    assert engine.pending is not None and engine.pending.due > 2_100
    # the loss after the action stays at the spike's level, above the loss before it
    after = np.concatenate([values, np.full(50, 5.0)])
    history = (np.arange(after.size), after)
    assert engine.verify(2_100, history) == []  # not diverging: its horizon decides
    events = engine.verify(2_100, history, diverging=True)
    record = next(e for k, e in events if k == "action_outcome")
    assert record["outcome"] == "rolled_back" and engine.pending is None
    assert record["evidence"]["rolled_back_because"] == DIVERGED_UNDER


def test_a_divergence_not_above_the_loss_before_the_action_waits_for_its_horizon():
    engine, model, _ = _engine(ProposeInOrder(Proposal("lr_scale", {"factor": 0.5})))
    steps, values = _spike_run(engine, model, onset=2_000, confirm=2_050)
    engine.maybe_act(2_050, "oscillating", [], (steps, values))
    # after the action the loss is back at its healthy level (a rise on the detector's window
    # from lower still, say): not worse than before the action, so nothing is judged early
    after = np.concatenate([values, np.full(50, 1.0)])
    assert engine.verify(2_100, (np.arange(after.size), after), diverging=True) == []
    assert engine.pending is not None


# ------------------------------------------------------------- a spike in a real loop

SPIKE_STEPS, SPIKE_FROM, SPIKE_TO, SPIKE_PEAK = 1000, 600, 700, 100.0
# The rewound run trains on up to ~200 fewer steps (those thrown away and those skipped):
# it must end within 25 % of the spike-free run, while the spike alone ends ten times worse.
SPIKE_TOLERANCE = 1.25


def _spiked_run(mode: str, seed: int) -> tuple[float, unstuck.Guard | None, int]:
    """A small MLP regression under Adam, 1000 steps. ``spike``/``unstuck``: from step 600 to
    700 the LR is raised geometrically to ×100 (an LR spike that the loss follows up), by the
    loop's step, so a rewound run that skips its batches moves past it."""
    torch.manual_seed(seed)
    x = torch.randn(2048, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(2048, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = unstuck.Guard(model, opt, policy="rescue", console=False) if mode == "unstuck" else None
    gen = torch.Generator().manual_seed(seed)
    skipped = 0
    for step in range(SPIKE_STEPS):
        idx = torch.randint(0, 2048, (32,), generator=gen)
        if guard is not None and guard.skip_batch():
            skipped += 1
            continue
        spike = mode != "clean" and SPIKE_FROM <= step < SPIKE_TO
        factor = SPIKE_PEAK ** ((step - SPIKE_FROM) / (SPIKE_TO - SPIKE_FROM)) if spike else 1.0
        for group in opt.param_groups:
            group["lr"] = 1e-2 * factor
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if guard is not None:
            guard.step(loss)
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(model(x), y))
    if guard is not None:
        guard.close()
    return final, guard, skipped


@pytest.mark.parametrize("seed", [0, 1])
def test_a_confirmed_spike_is_rewound_past_and_the_run_ends_near_the_spike_free_one(seed):
    clean, _, _ = _spiked_run("clean", seed)
    spiked, _, _ = _spiked_run("spike", seed)
    rescued, guard, skipped = _spiked_run("unstuck", seed)
    assert guard is not None
    rewinds = [a for a in guard.actions if a.name == "rewind"]
    assert len(rewinds) == 1 and rewinds[0].outcome == "kept"
    back = int(rewinds[0].evidence["restored_last_good_step"])
    assert back < SPIKE_FROM <= rewinds[0].step  # to before the spike, once it was confirmed
    assert skipped == rewinds[0].evidence["skip_batches"] > 0  # the loop skipped what it asked
    assert spiked > 10 * clean  # the spike alone ruins the run ...
    assert rescued <= SPIKE_TOLERANCE * clean  # ... the rewound run ends near the clean one


# ------------------------------------------------- the GPT spike task of bench/rescue.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import rescue  # noqa: E402
import rescue_tasks  # noqa: E402

# bench/rescue.py's gpt_lr_spike (a GPT-style decoder on a Markov chain, AdamW, warm-up and cosine,
# the LR ×50 over steps 480-520 of 1200) at half its width, d=32, and that width's LR, 1e-2 (the
# fault zoo's gpt_markov_adamw), so that a run takes seconds; the budget stays the task's, since
# a rewind costs ~200 steps (those thrown away and those skipped) whatever the budget.
GPT_SPIKE = replace(
    rescue_tasks.TASKS["gpt_lr_spike"],
    model=partial(rescue_tasks.GPT, d=32),
    lr=1e-2,
    eval_every=600,
)
# "No worse than the spike-free run": within the spread of this configuration's spike-free
# final loss over seeds 0, 1 and 2 — (max − min) / min = (0.7719 − 0.7630) / 0.7630 = 1.16 %,
# measured once, rounded up to 2 significant figures as bench/rescue.py --calibrate does for the
# task: a final within it is not told apart from the reference run reseeded.
GPT_TOLERANCE = 0.012


@pytest.mark.slow
def test_the_gpt_spike_task_is_rewound_past_and_ends_within_the_reference_seed_spread():
    spike = GPT_SPIKE.spike
    assert spike is not None
    reference = rescue.run(rescue_tasks.reference_task(GPT_SPIKE), "constant", 0)
    spiked = rescue.run(GPT_SPIKE, "constant", 0)
    rescued = rescue.run(GPT_SPIKE, "unstuck", 0)
    rewinds = [a for a in rescued["actions"] if a["name"] == "rewind"]
    assert len(rewinds) == 1 and rewinds[0]["outcome"] == "kept"
    back, at = rewinds[0]["restored_step"], rewinds[0]["step"]
    assert back < spike.start <= at  # to a state before the spike, once it was confirmed
    assert rescued["skipped_batches"] == at - back > 0  # the loop skipped what it was asked
    assert spiked["final_loss"] > 2 * reference["final_loss"]  # the spike alone ruins the run
    assert rescued["final_loss"] <= reference["final_loss"] * (1 + GPT_TOLERANCE)
