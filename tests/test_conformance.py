"""One test suite, run on every registered rule and action alike."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from conftest import regression_batch, tiny_mlp
from unstuck.diagnose import Evidence, all_rules
from unstuck.rescue import Controls, LRMultiplier, all_actions
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


def _full_state(model, optimizer, multiplier):
    return (
        [p.detach().clone() for p in model.parameters()],
        {
            k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
            for k, s in optimizer.state_dict()["state"].items()
        },
        [dict((k, v) for k, v in g.items() if k != "params") for g in optimizer.param_groups],
        multiplier.value,
    )


def _assert_same(a, b):
    params_a, state_a, groups_a, mult_a = a
    params_b, state_b, groups_b, mult_b = b
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b))
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        for n in state_a[k]:
            va, vb = state_a[k][n], state_b[k][n]
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb
    assert groups_a == groups_b and mult_a == mult_b


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_action_apply_then_undo_restores_exactly(name):
    action = ACTIONS[name]
    assert (type(action).__doc__ or "").strip() and action.explanation.strip()
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = regression_batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    multiplier = LRMultiplier(optimizer)
    controls = Controls(model, optimizer, multiplier)
    before = _full_state(model, optimizer, multiplier)
    params = dict(action.example_params)
    action.validate(params)
    token = action.apply(controls, params)
    torch.save(token, "/dev/null")  # tokens are primitives
    assert isinstance(action.describe(params), str)
    action.undo(controls, token)
    _assert_same(before, _full_state(model, optimizer, multiplier))


def test_findings_are_primitives_for_weights_only(tmp_path):
    finding = Finding("lr_too_low", 0.9, {"a": [1.0, float("nan")], "b": "x"}, 3, "s")
    torch.save(finding.to_dict(), tmp_path / "f.pt")
    assert Finding.from_dict(torch.load(tmp_path / "f.pt", weights_only=True)).evidence["b"] == "x"
