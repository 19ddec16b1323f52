"""The one confidence helper every rule starts from, and its tie to the acting threshold."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unstuck.diagnose import Evidence, get_rule
from unstuck.diagnose import base as diagnose_base
from unstuck.diagnose.base import (
    EXPLAINED_FACTOR,
    FOUND_CONFIDENCE,
    FOUND_MARGIN,
    MAX_FOUND_CONFIDENCE,
    ROOT_CONFIDENCE,
    found_confidence,
)
from unstuck.diagnose.calibration import calibrated
from unstuck.rescue.policy import MIN_CONFIDENCE
from unstuck.types import ACTING_CONFIDENCE


def test_the_base_is_the_acting_threshold_plus_the_margin():
    assert found_confidence(0.0) == ACTING_CONFIDENCE + FOUND_MARGIN == FOUND_CONFIDENCE
    assert FOUND_MARGIN > 0
    # the policy acts on, and diagnosis roots on, the same bar the base is defined against
    assert MIN_CONFIDENCE == ROOT_CONFIDENCE == ACTING_CONFIDENCE
    assert found_confidence(0.0) > MIN_CONFIDENCE
    # a cause found at its threshold, once explained by a root, drops below the bar
    assert found_confidence(0.0) * EXPLAINED_FACTOR < ACTING_CONFIDENCE


def test_monotone_in_strength_and_clipped_to_zero_and_the_cap():
    strengths = np.linspace(-2.0, 2.0, 401)
    for cap in (0.45, 0.9, MAX_FOUND_CONFIDENCE, 1.0):
        values = [found_confidence(float(s), cap=cap) for s in strengths]
        assert all(b >= a for a, b in itertools.pairwise(values)), f"not monotone, cap {cap}"
        assert min(values) == 0.0 and max(values) == cap
        inside = [v for v in values if 0.0 < v < cap]
        assert len(set(inside)) == len(inside), "strictly increasing between the bounds"
    assert found_confidence(10.0) == MAX_FOUND_CONFIDENCE  # the default cap
    assert found_confidence(-10.0) == 0.0


def test_terms_add_in_order_exactly_as_the_spelled_out_sum():
    rng = np.random.default_rng(0)
    for a, b in rng.uniform(0.0, 0.2, size=(200, 2)):
        assert found_confidence(float(a), float(b), cap=1.0) == FOUND_CONFIDENCE + a + b
    assert found_confidence(0.1, 0.05, 0.02, cap=1.0) == FOUND_CONFIDENCE + 0.1 + 0.05 + 0.02


def test_a_nan_strength_stays_nan_and_a_bad_cap_is_refused():
    assert math.isnan(found_confidence(float("nan")))
    for cap in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="cap must be in"):
            found_confidence(0.1, cap=cap)


def test_the_base_is_calibrated_as_a_finding_above_the_bar():
    # calibration keeps a finding below the bar a hint; the base is above it, so a scale may
    # lift or lower it like any other confident finding
    assert calibrated("lr_too_low", FOUND_CONFIDENCE) != calibrated("lr_too_low", 0.49)
    assert calibrated("lr_too_low", 0.49) < ACTING_CONFIDENCE


def test_a_rule_follows_the_base_when_it_moves(monkeypatch):
    """Rules read the base through the helper, not a copy: moving it moves their findings."""
    steps = np.arange(32)
    ev = Evidence(
        {
            "update_ratio": (steps[:8], np.full(8, 5e-5)),  # 0.3 decades below 1e-4
            "grad_norm": (steps, np.full(32, 0.5)),
        },
        step=400,
    )
    rule = get_rule("lr_too_low")
    before = rule.check(ev)
    assert before is not None and ACTING_CONFIDENCE < before.confidence < MAX_FOUND_CONFIDENCE
    monkeypatch.setattr(diagnose_base, "FOUND_CONFIDENCE", FOUND_CONFIDENCE + 0.05)
    after = rule.check(ev)
    assert after is not None
    assert after.confidence == pytest.approx(before.confidence + 0.05)
