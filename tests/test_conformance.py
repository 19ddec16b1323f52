"""One test suite, run on every registered rule and action alike."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from conftest import guarded_run_with_every_tap, regression_batch, tiny_mlp
from unstuck import signals
from unstuck.diagnose import Evidence, all_rules, causes
from unstuck.diagnose.base import FOUND_CONFIDENCE, Rule
from unstuck.diagnose.evidence import FACTS, derived_names
from unstuck.diagnose.selection import select_taps
from unstuck.rescue import Controls, LRMultiplier, all_actions, restore_snapshot, take_snapshot
from unstuck.rescue.base import Action
from unstuck.rescue.controls import AccumulationControl, ClipControl, SkipControl
from unstuck.signals.base import Tap
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
    assert rule.explains <= set(RULES) - {code}, "explains names other known causes"
    page = DOCS / "causes" / f"{code}.md"
    assert page.is_file(), f"every cause has a docs page: {page} is missing"
    assert f"`{code}`" in page.read_text() or code in page.read_text()


def literal_confidence_bases(source: str) -> list[int]:
    """Lines that add to a literal ``FOUND_CONFIDENCE`` (``0.6 + 0.2 * decades``) instead of
    calling ``found_confidence``: a copied base stops following the policy's acting threshold."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value == FOUND_CONFIDENCE:
                    lines.append(node.lineno)
    return sorted(set(lines))


CAUSE_FILES = sorted(Path(causes.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", CAUSE_FILES, ids=lambda p: p.stem)
def test_rules_take_their_base_from_the_confidence_helper(path):
    lines = literal_confidence_bases(path.read_text())
    assert not lines, (
        f"{path.name} lines {lines} add to a literal {FOUND_CONFIDENCE} base; "
        "call unstuck.diagnose.base.found_confidence(strength, ...) instead"
    )


def test_a_rule_with_a_literal_base_fails_the_check():
    assert literal_confidence_bases("c = 0.6 + 0.2 * decades\n") == [1]
    assert literal_confidence_bases("c = min(0.9, x + 0.6)\n") == [1]
    assert literal_confidence_bases("c = np.clip(0.6 + a + b, 0, 0.95)\n") == [1]
    assert literal_confidence_bases("c = found_confidence(0.2 * decades)\nd = 0.6 * x\n") == []


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
        "skip": controls.skip.state_dict(),
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
    skip = SkipControl()
    skip.owned = True
    return Controls(
        model,
        optimizer,
        multiplier,
        clip=clip,
        accumulation=AccumulationControl(2),
        skip=skip,
        best=lambda: best,
        restore=restore,
    )


# --------------------------------------------------------------------------- inputs


TAPS = [
    cls
    for cls in (getattr(signals, n) for n in signals.__all__)
    if isinstance(cls, type) and issubclass(cls, Tap) and cls is not Tap
]
PROVIDED = frozenset().union(*(tap.provides for tap in TAPS))
AVAILABLE = PROVIDED | derived_names(PROVIDED) | FACTS


def _declared(name: str, names: frozenset[str]) -> bool:
    """``name`` is in ``names``, or falls under a ``prefix/*`` entry there."""
    return name in names or ("/" in name and name.split("/", 1)[0] + "/*" in names)


def check_rule_inputs(rule: Rule) -> None:
    """What a rule requires is something a tap provides or a front-end sets: a misspelt name
    would otherwise keep the rule from ever running, with no error anywhere."""
    for names in (rule.requires, *rule.requires_any, rule.uses):
        unknown = sorted(n for n in names if not _declared(n, AVAILABLE))
        assert not unknown, f"{rule.code} requires {unknown}: provided by no tap and no fact"


@pytest.mark.parametrize("code", sorted(RULES))
def test_rule_requires_only_what_is_provided(code):
    check_rule_inputs(RULES[code])


def test_a_rule_with_a_misspelt_requirement_fails_the_check():
    class Misspelt(Rule):
        code = "misspelt"
        requires = frozenset({"loss", "grad_nrom"})

    class MisspeltFallback(Rule):
        code = "misspelt_fallback"
        requires = frozenset({"loss"})
        requires_any = (frozenset({"val_los"}),)

    class MisspeltUse(Rule):
        code = "misspelt_use"
        requires = frozenset({"grad_norm"})
        uses = frozenset({"clip_rte"})

    with pytest.raises(AssertionError, match="grad_nrom"):
        check_rule_inputs(Misspelt())
    with pytest.raises(AssertionError, match="val_los"):
        check_rule_inputs(MisspeltFallback())
    with pytest.raises(AssertionError, match="clip_rte"):
        check_rule_inputs(MisspeltUse())


def taps_read_but_not_selected(sources: dict[str, str], rules) -> dict[str, list[str]]:
    """The taps whose series the rule files name as string constants (``ev.get("clip_rate")``)
    that ``select_taps`` would not build for the registered rules, each with what names it: a
    read that no rule declares in ``requires`` or ``uses`` loses its tap once taps are gated."""
    selected = set(select_taps(TAPS, rules).needed)
    out: dict[str, list[str]] = {}
    for file, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            for tap in TAPS:
                if tap not in selected and select_taps([tap], [], always={node.value}).needed:
                    out.setdefault(tap.__name__, []).append(f"{file}: {node.value!r}")
    return out


def test_every_tap_a_rule_file_reads_is_selected_by_the_rules():
    sources = {p.name: p.read_text() for p in CAUSE_FILES}
    missing = taps_read_but_not_selected(sources, RULES.values())
    assert not missing, f"rules read these taps without declaring it (add to uses): {missing}"


def test_an_undeclared_read_fails_the_check():
    undeclared = {"sneaky.py": 'rates = ev.values_of("clip_rate")\n'}
    others = [r for c, r in RULES.items() if c != "over_clipping"]
    assert taps_read_but_not_selected(undeclared, others) == {"ClipTap": ["sneaky.py: 'clip_rate'"]}
    assert taps_read_but_not_selected(undeclared, RULES.values()) == {}


def test_every_tap_returns_only_what_it_provides(monkeypatch):
    outputs: dict[str, set[str]] = {tap.name: set() for tap in TAPS}
    for tap in TAPS:
        finish = tap.finish

        def record(self, host, finish=finish, tap=tap):
            out = finish(self, host)
            outputs[tap.name] |= set(out)
            return out

        monkeypatch.setattr(tap, "finish", record)
    evidence = _guarded_run_with_every_tap()
    for tap in TAPS:
        assert tap.provides, f"{tap.name} declares no provides"
        extra = sorted(n for n in outputs[tap.name] if not _declared(n, tap.provides))
        assert not extra, f"{tap.name} returns {extra} beyond its provides"
    # Taps that need a condition this run lacks (a GradScaler, several ranks) return nothing.
    assert {n for n, seen in outputs.items() if not seen} <= {"rank_checksum"}
    undeclared = sorted(n for n in evidence if not _declared(n, AVAILABLE))
    assert not undeclared, f"the Guard's evidence holds undeclared names {undeclared}"


def _guarded_run_with_every_tap():
    guard = guarded_run_with_every_tap()
    return guard.evidence.build(guard.steps)


# --------------------------------------------------------------------------- actions


def check_invalid_params_refused(action: Action) -> None:
    """Every parameter set the action declares invalid is refused, naming the action."""
    assert action.invalid_params, f"{action.name}: declare invalid_params (one per parameter)"
    for bad in action.invalid_params:
        with pytest.raises(ValueError, match=action.name):
            action.validate(dict(bad))


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_action_rejects_its_declared_invalid_params(name):
    check_invalid_params_refused(ACTIONS[name])


def test_an_action_whose_bad_params_validate_fails_the_check():
    class Lax(Action):
        name = "lax"
        invalid_params = ({"factor": 0.0},)

        def validate(self, params):  # accepts anything: the bug the check exists for
            return None

    class Undeclared(Action):
        name = "undeclared"

    with pytest.raises(pytest.fail.Exception):
        check_invalid_params_refused(Lax())
    with pytest.raises(AssertionError, match="declare invalid_params"):
        check_invalid_params_refused(Undeclared())


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
