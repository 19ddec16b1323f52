"""Tap selection by what the registered rules read: a tap no reader needs is not built."""

from __future__ import annotations

import pytest

from unstuck import signals
from unstuck.diagnose import all_rules
from unstuck.diagnose.base import Rule
from unstuck.diagnose.selection import ALWAYS_NEEDED, rule_inputs, select_taps
from unstuck.signals.base import Tap

TAPS = [
    cls
    for cls in (getattr(signals, n) for n in signals.__all__)
    if isinstance(cls, type) and issubclass(cls, Tap) and cls is not Tap
]
RULES = all_rules()


def _rule(code: str, requires=(), requires_any=(), uses=()) -> Rule:
    cls = type(
        code,
        (Rule,),
        {
            "code": code,
            "requires": frozenset(requires),
            "requires_any": tuple(frozenset(a) for a in requires_any),
            "uses": frozenset(uses),
        },
    )
    return cls()


def _consumers(tap: type[Tap]) -> list[str]:
    """The registered rules without which ``tap`` would not be selected."""
    alone = select_taps([tap], [])
    assert not alone.needed
    return sorted(code for code, rule in RULES.items() if select_taps([tap], [rule]).needed)


def test_the_registered_rules_name_only_what_some_tap_or_fact_provides():
    selection = select_taps(TAPS, RULES.values(), always=ALWAYS_NEEDED)
    assert selection.unknown == {}
    assert len(selection.needed) + len(selection.dropped) == len(TAPS)
    # each tap kept provides something a rule or an always-needed reader reads
    wanted = frozenset(ALWAYS_NEEDED).union(*(rule_inputs(r) for r in RULES.values()))
    for tap in selection.needed:
        assert select_taps([tap], [_rule("probe", uses=wanted)]).needed == (tap,)


SOLE = [
    (tap, codes[0])
    for tap in TAPS
    if not select_taps([tap], [], always=ALWAYS_NEEDED).needed
    for codes in [_consumers(tap)]
    if len(codes) == 1
]


def test_some_tap_has_a_single_consuming_rule():
    # the removal test below must have something to remove
    assert {tap.__name__ for tap, _ in SOLE} >= {"PrecisionTap", "RankChecksumTap"}


@pytest.mark.parametrize(("tap", "code"), SOLE, ids=[t.__name__ for t, _ in SOLE])
def test_removing_the_only_consumer_of_a_tap_drops_that_tap(tap, code):
    everything = select_taps(TAPS, RULES.values(), always=ALWAYS_NEEDED)
    without = select_taps(TAPS, [r for c, r in RULES.items() if c != code], always=ALWAYS_NEEDED)
    assert tap in everything.needed
    assert tap in without.dropped
    assert set(everything.needed) - set(without.needed) == {tap}, "only that tap goes"


def test_a_rule_that_only_uses_a_signal_keeps_its_tap():
    # over_clipping runs on gradient norms alone but reads the clip rate when it is there:
    # without `uses`, the clip tap would be dropped and the rule would lose its best reading
    clip = next(t for t in TAPS if t.__name__ == "ClipTap")
    assert _consumers(clip) == ["over_clipping"]
    assert not (RULES["over_clipping"].requires & clip.provides)


def test_a_misspelt_requirement_is_reported_not_silently_dropped():
    rules = [
        _rule("misspelt", requires={"loss", "grad_nrom"}),
        _rule("misspelt_fallback", requires={"loss"}, requires_any=[{"val_los"}]),
        _rule("misspelt_use", requires={"loss"}, uses={"clip_rte"}),
        _rule("fine", requires={"loss", "optimizer_type"}),  # a fact: no tap, not unknown
    ]
    selection = select_taps(TAPS, rules, always={"param_distanse"})
    assert selection.unknown == {
        "misspelt": ("grad_nrom",),
        "misspelt_fallback": ("val_los",),
        "misspelt_use": ("clip_rte",),
        "always": ("param_distanse",),
    }


def test_derived_and_wildcard_names_select_the_tap_they_come_from():
    by_name = {t.__name__: t for t in TAPS}
    cases = {
        "loss_initial": "LossTap",  # derived: the loss's starting level
        "grad_norm_peak": "GradNormTap",  # derived: the largest gradient norm
        "nonfinite_grad_total": "GradNormTap",
        "lr/*": "LRTap",
        "lr/0": "LRTap",
        "loss_component/ce": "LossComponentsTap",
    }
    for name, tap in cases.items():
        selection = select_taps(TAPS, [_rule("r", requires={name})])
        assert selection.needed == (by_name[tap],), name
        assert selection.unknown == {}


def test_facts_select_nothing_and_order_is_kept_for_instances():
    assert select_taps(TAPS, [_rule("r", requires={"optimizer_type"})]).needed == ()
    instances = [signals.LRTap(), signals.LossTap(), signals.WeightNormTap()]
    selection = select_taps(instances, [_rule("r", requires={"weight_norm", "loss"})])
    assert selection.needed == (instances[1], instances[2])
    assert selection.dropped == (instances[0],)
    assert select_taps(instances, [], always={"lr/*"}).needed == (instances[0],)
