"""One test suite, run on every registered rule and action alike."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from conftest import regression_batch, tiny_mlp
from unstuck.diagnose import Evidence, all_rules
from unstuck.rescue import Controls, LRMultiplier, all_actions, restore_snapshot, take_snapshot
from unstuck.rescue.controls import AccumulationControl, ClipControl
from unstuck.types import Finding

DOCS = Path(__file__).resolve().parents[1] / "docs"
RULES = all_rules()
ACTIONS = all_actions()


def test_registries_are_not_empty():
    assert {"lr_too_low", "lr_too_high", "nonfinite", "frozen_parameters"} <= set(RULES)
    assert "lr_scale" in ACTIONS


@pytest.mark.parametrize("code", sorted(RULES))
def test_rule_conformance(code):
    rule = RULES[code]
    module = inspect.getmodule(type(rule))
    assert module is not None and module.__name__.rsplit(".", 1)[-1] == code
    assert (module.__doc__ or "").strip(), "the module docstring is the one-line title"
    assert (type(rule).__doc__ or "").strip() and rule.explanation.strip()
    assert isinstance(rule.requires, frozenset)
    assert rule.check(Evidence({})) is None  # no evidence, no finding — and no exception
    assert rule.symptom_of <= set(RULES) - {code}, "symptom_of names other known causes"
    page = DOCS / "causes" / f"{code}.md"
    assert page.is_file(), f"every cause has a docs page: {page} is missing"
    assert f"`{code}`" in page.read_text() or code in page.read_text()


def _full_state(controls):
    """Everything an action may touch, as comparable copies."""
    model, optimizer = controls.model, controls.optimizer
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "state": {
            k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
            for k, s in optimizer.state_dict()["state"].items()
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "multiplier": controls.lr.state_dict(),
        "clip": controls.clip.state_dict(),
        "accumulation": controls.accumulation.state_dict(),
        "stop": controls.stop.state_dict(),
    }


def _assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for n in a["state"][k]:
            va, vb = a["state"][k][n], b["state"][k][n]
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb
    for key in ("groups", "multiplier", "clip", "accumulation", "stop"):
        assert a[key] == b[key], key


def _train(model, optimizer, steps, seed=0):
    for i in range(steps):
        x, y = regression_batch(seed=seed + i)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


# The optimizer an action is exercised on: Adam, except where the action changes plain SGD only.
def _adam(params):
    return torch.optim.Adam(params, lr=0.01)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01)


OPTIMIZER_FOR = {"add_momentum": _sgd}


def _owned_controls(make_optimizer=_adam):
    """Controls with every handle owned, a best snapshot that differs from the live state, and
    a restore that, like the Guard's, also puts back unstuck's multiplier."""
    model = tiny_mlp()
    optimizer = make_optimizer(model.parameters())
    multiplier = LRMultiplier(optimizer)
    _train(model, optimizer, 2)
    best = take_snapshot(2, model, optimizer, extra={"lr": {"value": 0.5, "shape": None}})
    _train(model, optimizer, 2, seed=10)
    multiplier.set(1.5)  # not 1, so a product and a replacement differ

    def restore(snap):
        restore_snapshot(snap, model, optimizer)
        if "lr" in snap.extra:
            multiplier.load_state_dict(snap.extra["lr"])

    clip = ClipControl()
    clip.owned = True
    return Controls(
        model,
        optimizer,
        multiplier,
        clip=clip,
        accumulation=AccumulationControl(2),
        best=lambda: best,
        restore=restore,
    )


# One bad value per parameter an action reads (every action with params is covered).
BAD_PARAMS = {
    "lr_scale": [{"factor": 0.0}, {"factor": float("nan")}],
    "warm_restart": [{"peak": 1.0}, {"end": 5.0}, {"length": 1}, {"length": 2.5}],
    "cyclical_bump": [{"peak": 0.5}, {"length": 0}],
    "clip_adjust": [{"factor": -1.0}, {"factor": "10"}, {"factr": 10.0}],
    "accumulation_change": [{"factor": 1.0}, {"factor": 0.0}, {"factor": True}],
    "reset_optimizer_state": [{"factor": 2.0}],
    "keep_best_and_stop": [{"best_step": -1}, {"steps": 3}],
    "lr_range_test": [{"steps": 5}, {"low": 0.0}, {"low": 10.0, "high": 1.0}, {"high": "x"}],
    "add_momentum": [{"momentum": 1.0}, {"momentum": 0.0}, {"momentum": "0.9"}, {"beta": 0.9}],
    "warmup": [{"length": 1}, {"length": 100.0}, {"steps": 100}],
}


def test_every_action_has_bad_params_listed():
    assert set(ACTIONS) <= set(BAD_PARAMS)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_action_rejects_bad_params(name):
    action = ACTIONS[name]
    for bad in BAD_PARAMS.get(name, []):
        with pytest.raises(ValueError, match=name):
            action.validate(bad)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_action_apply_then_undo_restores_exactly(name, tmp_path):
    action = ACTIONS[name]
    assert (type(action).__doc__ or "").strip() and action.explanation.strip()
    controls = _owned_controls(OPTIMIZER_FOR.get(name, _adam))
    before = _full_state(controls)
    params = dict(action.example_params)
    action.validate(params)
    assert action.unavailable(controls, params) is None
    duration = action.duration(params)
    assert isinstance(duration, int) and duration >= 0
    token = action.apply(controls, params)
    path = tmp_path / "token.pt"
    torch.save(token, path)
    token = torch.load(path, weights_only=True)  # undo from what a checkpoint gives back
    assert isinstance(action.describe(params), str) and action.describe(params)
    action.undo(controls, token)
    _assert_same(before, _full_state(controls))
    assert controls.stop.requested is False


def test_findings_are_primitives_for_weights_only(tmp_path):
    finding = Finding("lr_too_low", 0.9, {"a": [1.0, float("nan")], "b": "x"}, 3, "s")
    torch.save(finding.to_dict(), tmp_path / "f.pt")
    assert Finding.from_dict(torch.load(tmp_path / "f.pt", weights_only=True)).evidence["b"] == "x"


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_action_has_its_section_and_table_row_in_the_docs(name):
    page = (DOCS / "actions.md").read_text()
    assert f"## `{name}`" in page, f"docs/actions.md needs a section for {name}"
    assert f"| `{name}` |" in page, f"docs/actions.md's table needs a row for {name}"
