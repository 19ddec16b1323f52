"""The engine's parts by job: probes behind one interface, a snapshot book with named slots,
follow-ups and restarts declared by the plugins, and no plugin named in the orchestration."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_mlp
from unstuck.diagnose import all_rules
from unstuck.rescue import Controls, LRMultiplier, all_actions, take_snapshot
from unstuck.rescue.actions.lr_scale import LRScale
from unstuck.rescue.branches import BranchTrial
from unstuck.rescue.policy import Proposal
from unstuck.rescue.probe import Probe, probe_kinds
from unstuck.rescue.range_test import MIN_RANGE_STEPS, RangeTest
from unstuck.rescue.snapshot import SnapshotMismatchError, SnapshotStore
from unstuck.rescue.snapshot_book import (
    BEST,
    LAST_GOOD,
    LAST_GOOD_EVERY,
    START,
    KeptStates,
    Slot,
    SnapshotBook,
    ring_every,
)
from unstuck.types import ActionRecord

RESCUE = Path(__file__).resolve().parents[1] / "src" / "unstuck" / "rescue"
# The orchestration: what decides, runs probes and keeps states. None may name a plugin.
ORCHESTRATION = [
    "engine.py",
    "policy.py",
    "probe.py",
    "range_test.py",
    "branches.py",
    "pending.py",
    "episode.py",
    "snapshot_book.py",
    "declared.py",
    "events.py",
    "restart.py",
]


# -- probes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(probe_kinds()))
def test_every_probe_kind_implements_the_probe_interface(name):
    kind = probe_kinds()[name]
    assert issubclass(kind, Probe) and kind.name == name
    for method in ("advance", "flush_hint", "start", "over_budget"):
        assert getattr(kind, method) is not getattr(Probe, method), f"{name} must define {method}"
    # A probe that is a registered action is the action the engine checks and applies first.
    assert (name in all_actions()) is kind.is_action
    if kind.is_action:
        assert all_actions()[name].probe
    # The budget refusal is what the engine waits on: it must say "probe budget".
    refusal = kind.over_budget(0, 100, 0.1, {}, 200)
    assert refusal is not None and refusal.startswith("probe budget")


def test_every_action_that_probes_has_a_probe_kind():
    probing = {name for name, action in all_actions().items() if action.probe}
    assert probing and probing <= set(probe_kinds())


class _Host:
    """The little a probe may use of the engine."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = tiny_mlp()
        opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.controls = Controls(self.model, opt, LRMultiplier(opt))
        self.snapshots = SnapshotStore(1 << 30, None)
        self.evaluate = lambda: None
        self.restored = 0

    def capture(self, step):
        return take_snapshot(step, self.model, self.controls.optimizer)

    def restore(self, snap):
        from unstuck.rescue.snapshot import restore_snapshot

        self.restored += 1
        restore_snapshot(snap, self.model, self.controls.optimizer)


def _record(name: str, params: dict) -> ActionRecord:
    return ActionRecord(name=name, step=10, reason="", outcome="probing", params=params)


def test_a_range_test_runs_its_sweep_restores_and_hands_over_an_lr_scale():
    host = _Host()
    snap = host.snapshots.put(host.capture(10))
    params = RangeTest.fit_params({"steps": 200}, allowance=60)
    assert params["steps"] == 60  # shortened to the budget left
    before = (np.arange(5.0), np.ones(5))
    probe = RangeTest.start(
        host,
        10,
        snap,
        Proposal("lr_range_test", params),
        _record(RangeTest.name, params),
        before,
        200,
    )
    assert isinstance(probe, Probe) and not probe.done and probe.flush_hint(11) is None
    # A curve that falls with the LR, then blows up: read every step until it stops.
    step, events = 10, []
    while not probe.done and step < 200:
        step += 1
        x = (step - 11) / 60
        loss = 2.0 - x if x < 0.7 else 2.0 * 10 ** (10 * (x - 0.7))
        events = probe.advance(step, np.array([step]), np.array([loss]))
    assert probe.done and probe.spent == step - 10 and host.restored == 1
    assert [kind for kind, _ in events] == ["action_outcome", "probe"]
    assert probe.record.outcome == "restored" and probe.nonfinite == 0
    assert step < 10 + 60 + 1, "the blow-up stopped the sweep before its end"
    assert probe.follow is not None and probe.follow.action == LRScale.name
    assert probe.follow_evidence == {"range_test_step": 10}
    assert probe.before is before


def test_a_branch_trial_refuses_a_budget_too_small_for_its_candidates():
    need = BranchTrial.budget_needed({}, 200)
    assert BranchTrial.over_budget(need, 1000, 0.1, {}, 200) is None
    assert BranchTrial.over_budget(need - 1, 1000, 0.1, {}, 200) is not None
    assert RangeTest.over_budget(MIN_RANGE_STEPS, 1000, 0.1, {}, 200) is None


def test_a_branch_trial_sets_no_field_of_its_host():
    """It reads the host's handles and store; the engine applies its cooldown (``rests``)."""
    host = _Host()
    snap = host.snapshots.put(host.capture(0))
    before = dict(vars(host))
    trial = BranchTrial.start(
        host,
        0,
        snap,
        Proposal(BranchTrial.name, {"horizon": 30}),
        None,
        (np.zeros(0), np.zeros(0)),
        200,
    )
    step = 0
    while not trial.done:
        step += trial.flush_hint(step)
        trial.advance(step, np.arange(step - 29, step + 1), np.linspace(1.0, 0.9, 30))
    assert trial.rests and trial.spent == 30 * (len(trial.branches) - 1)
    assert set(vars(host)) == set(before)
    assert {k: v for k, v in vars(host).items() if k != "restored"} == {
        k: v for k, v in before.items() if k != "restored"
    }


# -- the snapshot book ----------------------------------------------------------------------
def _snap(host, step):
    return host.capture(step)


def test_a_slot_holds_one_snapshot_and_refilling_it_drops_the_last():
    host = _Host()
    store = host.snapshots
    book = SnapshotBook(store, {"a": Slot(), "b": Slot(step=-5)})
    first = book.fill("a", _snap(host, 1), step=1, value=0.5)
    second = book.fill("a", _snap(host, 2), step=2)
    assert first != second and book["a"].key == second
    with pytest.raises(KeyError):
        store.get(first)  # the one it replaced is gone
    assert book["a"].step == 2 and book["a"].value == 0.5  # a mark not given stays
    assert book.get("b") is None and book["b"].step == -5
    book.empty("a")
    assert book.get("a") is None and book["a"].step == 2  # marks outlive the snapshot
    key = book.fill("b", _snap(host, 3))
    book.empty_key(key)
    assert book["b"].key is None


def test_kept_states_keep_the_best_the_last_good_and_the_start_by_their_rules():
    host = _Host()
    refusals = []
    kept = KeptStates(host.snapshots, 100, host.capture, host.restore, refusals.append)
    kept.note_best(10, 0.5)
    kept.note_best(20, 0.7)  # not better: the step-10 state stays
    kept.note_best(30, math.nan)
    assert kept.best() is not None and kept.best().step == 10
    assert kept.book[BEST].value == 0.5
    kept.note_good(0, 1.0, force=False)  # the first healthy flush keeps one
    kept.note_good(LAST_GOOD_EVERY - 1, 0.9, force=True)
    assert kept.book[LAST_GOOD].step == LAST_GOOD_EVERY - 1
    soon = LAST_GOOD_EVERY - 1 + ring_every(LAST_GOOD_EVERY - 1) - 1  # the ring's cadence
    kept.note_good(soon, 0.95, force=False)  # too soon
    assert kept.book[LAST_GOOD].step == LAST_GOOD_EVERY - 1
    assert kept.held_good() == [LAST_GOOD_EVERY - 1, 0]  # the older state is still held
    assert kept.worse_than_last_good(1.0) and not kept.worse_than_last_good(0.8)
    kept.note_start(0)
    assert kept.start_within_horizon(100)
    assert not kept.start_within_horizon(101) and kept.book[START].key is None
    state = kept.state_dict()
    fresh = KeptStates(SnapshotStore(1 << 30, None), 100, host.capture, host.restore, print)
    fresh.load_state_dict(state)
    assert fresh.best() is not None and fresh.best().step == 10
    assert fresh.book[BEST].value == 0.5


def test_a_kept_state_that_no_longer_fits_is_dropped_not_restored():
    host = _Host()
    refusals = []

    def refuse(snap):
        raise SnapshotMismatchError("the model changed")

    kept = KeptStates(host.snapshots, 100, host.capture, refuse, refusals.append)
    kept.note_start(0)
    assert kept.return_to(START) is None
    assert kept.book[START].key is None and len(refusals) == 1


# -- plugins declare, the engine reads ------------------------------------------------------
def test_declared_restart_remedies_and_effects_name_registered_plugins():
    actions, rules = all_actions(), all_rules()
    for code, rule in rules.items():
        assert rule.restart_remedies <= set(actions), code
        assert isinstance(rule.lr_raise_effect, bool) and isinstance(rule.broken_state, bool)
    assert any(rule.restart_remedies for rule in rules.values())


def test_lr_scale_finishes_a_capped_move_then_continues_a_raise_that_helped():
    lr_scale = all_actions()[LRScale.name]

    def kept(params, **evidence):
        return ActionRecord(
            name=LRScale.name,
            step=0,
            reason="",
            outcome="kept",
            params=params,
            evidence={"cause": "x", **evidence},
        )

    follow = lr_scale.follow_up(kept({"factor": 100.0, "estimate": 1000.0}))
    assert follow is not None and follow.action == LRScale.name
    assert follow.params == {"factor": 10.0, "estimate": 10.0}
    assert lr_scale.follow_up(kept({"factor": 10.0})) is None  # not shown better: stop
    more = lr_scale.follow_up(kept({"factor": 10.0}, verdict_better=True))
    assert more is not None and more.params["factor"] == pytest.approx(math.sqrt(10.0))
    assert lr_scale.follow_up(kept({"factor": 0.1}, verdict_better=True)) is None  # a cut
    assert lr_scale.restarts({"factor": 0.1}) and not lr_scale.restarts({"factor": 3.0})


# -- no plugin named in the orchestration ---------------------------------------------------
def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _plugin_literals(path: Path) -> list[str]:
    """The action, probe and cause names written as string literals in ``path``, except a
    probe's own name in the file that defines it."""
    names = set(all_actions()) | set(all_rules()) | set(probe_kinds())
    own = {kind.name for kind in probe_kinds().values() if inspect.getsourcefile(kind) == str(path)}
    tree = ast.parse(path.read_text())
    return [
        f"{path.name}:{line}: {value!r}"
        for line, value in _string_constants(tree)
        if value in names and value not in own
    ]


@pytest.mark.parametrize("module", ORCHESTRATION)
def test_no_action_or_cause_is_named_in_the_orchestration(module):
    assert _plugin_literals(RESCUE / module) == []


def test_the_literal_scan_finds_a_named_action(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Doc naming lr_scale is fine."""\n\nif name == "lr_scale":\n    pass\n')
    assert _plugin_literals(bad) == ["bad.py:3: 'lr_scale'"]


def test_a_range_test_whose_snapshot_no_longer_fits_fails_and_undoes_its_ramp(caplog):
    """The probe's restore is refused (the model changed shape mid-sweep): the sweep ends
    ``failed`` with the reason, the LR ramp is undone, its steps are charged, and nothing
    starts from its suggestion."""
    from conftest import ProposeInOrder
    from unstuck.rescue import RescueEngine

    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lr = LRMultiplier(opt)
    proposal = Proposal(RangeTest.name, {"steps": 50})
    engine = RescueEngine(Controls(model, opt, lr), ProposeInOrder(proposal))
    handles = lr.state_dict()
    steps = np.arange(1, 1001, dtype=float)
    events = engine.decide(1000, "plateau", [], (steps, np.ones(1000)), None)
    assert [e["outcome"] for _, e in events] == ["probing"] and engine.range_test is not None
    assert lr.state_dict() != handles  # the sweep's ramp runs
    model.register_buffer("grown", torch.zeros(3))
    events, step = [], 1000
    while engine.probing:
        step += 1
        events = engine.advance_probe(step, np.array([step]), np.array([1.0 - step * 1e-4]))
    assert [(k, e["outcome"]) for k, e in events] == [("action_outcome", "failed")]
    assert "could not roll back" in events[0][1]["evidence"]["failed_because"]
    assert lr.state_dict() == handles and engine.pending is None
    assert engine.probe_steps == step - 1000 and engine.quiet_until == 0
