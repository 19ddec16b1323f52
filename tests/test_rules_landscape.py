"""Landscape and end-state rules on hand-built evidence: fire, stay quiet, edges, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unstuck.diagnose import Evidence, get_rule, run_rules
from unstuck.diagnose.base import ROOT_CONFIDENCE
from unstuck.diagnose.causes._rise import ALPHA, mann_kendall_p, rise_test


def _series(values, start=0, stride=1):
    values = np.asarray(values, dtype=float)
    return (np.arange(start, start + stride * values.size, stride), values)


def _probe(lmax, lmin, grad=0.01, loss=1.0, norm=10.0, **extra):
    return {
        "status": "ok",
        "lambda_max": lmax,
        "lambda_min": lmin,
        "grad_norm": grad,
        "loss": loss,
        "param_norm": norm,
        "step_size": None,
        **extra,
    }


def _steps(ratio=1e-3, grad=0.5):
    # effective step η = ratio·‖θ‖/‖g‖ = 1e-3·10/0.5 = 0.02
    return {"update_ratio": _series([ratio] * 8), "grad_norm": _series([grad] * 32)}


CODES = ["saddle_point", "flat_region", "converged", "capacity_limit", "overfitting"]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize(
    "ev",
    [
        {},
        {"curvature": None, "loss": _series([]), "val_loss": _series([])},
        {"curvature": {"status": "skipped", "reason": "x"}},
        {"curvature": _probe(math.nan, -1.0)},
        {"loss": _series([math.nan] * 100), "val_loss": _series([math.nan] * 9)},
        {"grad_snr": _series([math.nan] * 3), "detector_state": "plateau"},
    ],
)
def test_rules_return_none_on_empty_partial_or_nan_evidence(code, ev):
    assert get_rule(code).check(Evidence(ev, step=10)) is None


def test_saddle_point_fires_on_significant_negative_curvature():
    ev = Evidence({"curvature": _probe(2.0, -1.0), **_steps()}, step=500)
    f = get_rule("saddle_point").check(ev)
    assert f is not None and f.cause == "saddle_point"
    assert 0.8 < f.confidence <= 0.9
    assert f.evidence["negative_ratio"] == pytest.approx(0.5)
    lr = [r for r in f.remedies if r.automatic]
    assert lr and lr[0].action == "lr_scale" and lr[0].params["factor"] == pytest.approx(3.0)


def test_saddle_point_edges_and_stability_bound():
    rule = get_rule("saddle_point")
    at = rule.check(Evidence({"curvature": _probe(1.0, -0.051), **_steps()}))
    assert at is not None and at.confidence == pytest.approx(0.6, abs=0.01)
    assert rule.check(Evidence({"curvature": _probe(1.0, -0.049), **_steps()})) is None
    assert rule.check(Evidence({"curvature": _probe(1.0, 0.2), **_steps()})) is None
    # η·λ_max already 0.02·40 = 0.8: a bump would be unstable, so no automatic LR raise
    steep = rule.check(Evidence({"curvature": _probe(40.0, -20.0), **_steps()}))
    assert steep is not None and not any(r.automatic for r in steep.remedies)


def test_flat_region_needs_tiny_felt_curvature_and_gradient():
    rule = get_rule("flat_region")
    # η = 0.02; η·λ = 0.02·0.01 = 2e-4 < 2e-2; η·g²/L = 0.02·1e-4 = 2e-6; ‖g‖‖θ‖/L = 0.1
    flat = rule.check(Evidence({"curvature": _probe(0.01, -0.005), **_steps()}))
    assert flat is not None and flat.cause == "flat_region"
    assert flat.evidence["felt_curvature"] == pytest.approx(2e-4)
    assert flat.evidence["gradient_scale"] == pytest.approx(0.1)
    assert flat.remedies[0].automatic and 2.0 <= flat.remedies[0].params["factor"] <= 100.0
    # and it takes precedence over the saddle call for the same numbers
    assert (
        get_rule("saddle_point").check(Evidence({"curvature": _probe(0.01, -0.005), **_steps()}))
        is None
    )
    # η·λ = 0.02·2 = 4e-2 ≥ 2e-2: the sharpest direction is felt, not flat
    assert rule.check(Evidence({"curvature": _probe(2.0, 0.01), **_steps()})) is None
    # η·λ just under the bound (0.02·0.99 = 1.98e-2) is flat
    assert rule.check(Evidence({"curvature": _probe(0.99, 0.01), **_steps()})) is not None
    # a healthy gradient (‖g‖‖θ‖/L = 0.2·10/1 = 2 ≥ 1) makes tiny steps the LR's fault
    healthy = _probe(0.01, 0.0, grad=0.2)
    assert rule.check(Evidence({"curvature": healthy, **_steps(ratio=1e-5)})) is None
    # the gradient below a tenth of its noise: a noisy minimum, not a flat slope
    noisy = {"curvature": _probe(0.01, -0.005), **_steps(), "grad_snr": _series([0.05] * 3)}
    assert rule.check(Evidence(noisy)) is None
    # no step size known at all: cannot call anything flat
    assert rule.check(Evidence({"curvature": _probe(0.01, 0.0)})) is None


def _end_state(drop, snr, state="plateau", series="train", val=None, extra=None):
    loss = np.concatenate([np.full(20, 2.0), np.full(200, 2.0 / drop)])
    data = {
        "loss": _series(loss),
        "grad_snr": _series([snr] * 3),
        "detector_state": state,
        "detector_series": series,
        **_steps(),
    }
    if val is not None:
        data["val_loss"] = _series(val, start=50, stride=50)
    data.update(extra or {})
    return Evidence(data, step=219)


def test_converged_fires_on_a_low_plateau_below_noise_and_stays_below_the_alarm_bar():
    f = get_rule("converged").check(_end_state(100.0, 0.3, val=[1.0, 0.5, 0.3, 0.3]))
    assert f is not None and 0.35 <= f.confidence < 0.5
    assert f.evidence["decades_fallen"] == pytest.approx(2.0)
    with_min = _end_state(100.0, 0.3, extra={"curvature": _probe(1.0, 0.0, grad=0.01)})
    assert get_rule("converged").check(with_min).confidence > f.confidence - 0.05
    assert get_rule("capacity_limit").check(_end_state(100.0, 0.3)) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drop": 5.0, "snr": 0.3},  # less than a decade gone: not converged
        {"drop": 100.0, "snr": 2.0},  # gradient above its noise: still something to learn
        {"drop": 100.0, "snr": 0.3, "state": "improving"},
        {"drop": 100.0, "snr": 0.3, "val": [1.0, 0.3, 0.5, 0.5, 0.5]},  # validation rising
        {"drop": 100.0, "snr": 0.3, "extra": {"curvature": _probe(1.0, -0.5)}},  # a saddle
    ],
)
def test_converged_stays_quiet(kwargs):
    assert get_rule("converged").check(_end_state(**kwargs)) is None


def test_capacity_limit_on_a_high_plateau_with_healthy_dynamics():
    ev = _end_state(1.5, 0.5, extra={"curvature": _probe(1.0, 0.0)})
    f = get_rule("capacity_limit").check(ev)
    assert f is not None and f.confidence == pytest.approx(0.45)
    assert f.evidence["fraction_of_start"] == pytest.approx(1 / 1.5)
    bare = get_rule("capacity_limit").check(
        _end_state(1.5, 2.0, extra={"update_ratio": _series([])})
    )
    assert bare is not None and bare.confidence < f.confidence


@pytest.mark.parametrize(
    "extra",
    [
        {"update_ratio": _series([1e-6] * 8)},  # LR far too low
        {"update_ratio": _series([0.5] * 8)},  # LR far too high
        {"grad_norm": _series([math.inf] * 8)},
        {"curvature": _probe(1.0, -0.5)},  # a saddle: the landscape, not the model's size
        {"val_loss": _series([1.0, 0.5, 0.8, 0.8, 0.8], start=50, stride=50)},  # overfitting
    ],
)
def test_capacity_limit_defers_to_unhealthy_dynamics(extra):
    assert get_rule("capacity_limit").check(_end_state(1.5, 0.5, extra=extra)) is None


def test_capacity_limit_ranks_below_a_fixable_cause():
    ev = _end_state(1.5, 0.5, extra={"curvature": _probe(1.0, 0.0)})
    data = dict(ev)
    data["update_ratio"] = _series([2e-6] * 8)  # lr_too_low fires; capacity is then not checked
    findings = run_rules(Evidence(data, step=ev.step))
    causes = [f.cause for f in findings]
    assert "lr_too_low" in causes and "capacity_limit" not in causes


def _overfit(val, train_drop=True, state="diverging", series="val"):
    train = np.linspace(1.0, 0.01 if train_drop else 1.0, 400)
    return Evidence(
        {
            "loss": _series(train),
            "val_loss": _series(val, start=49, stride=50),
            "detector_state": state,
            "detector_series": series,
        },
        step=399,
    )


def test_overfitting_fires_on_prechelt_gl_with_train_falling():
    f = get_rule("overfitting").check(_overfit([1.0, 0.5, 0.4, 0.5, 0.6, 0.62, 0.6]))
    assert f is not None and f.cause == "overfitting"
    assert f.evidence["generalization_loss"] == pytest.approx(0.5)  # median(0.6,0.62,0.6)/0.4−1
    assert f.confidence == pytest.approx(0.9)
    assert f.evidence["best_step"] == 149
    weak = get_rule("overfitting").check(_overfit([1.0, 0.5, 0.4, 0.42, 0.43, 0.44]))
    assert weak is not None and 0.6 <= weak.confidence < 0.75


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val": [1.0, 0.5, 0.4, 0.41, 0.41, 0.41]},  # GL 2.5 % < 5 %
        {"val": [1.0, 0.5, 0.4, 0.6, 0.6, 0.6], "train_drop": False},  # both rising/flat
        {"val": [1.0, 0.5, 0.4, 0.6, 0.6, 0.6], "state": "plateau", "series": "train"},
        {"val": [1.0, 0.5]},  # too few validation points
    ],
)
def test_overfitting_stays_quiet(kwargs):
    assert get_rule("overfitting").check(_overfit(**kwargs)) is None


@pytest.mark.parametrize(
    ("code", "curvature"), [("saddle_point", (2.0, -1.0)), ("flat_region", (0.01, -0.005))]
)
def test_momentum_comes_first_only_for_momentum_free_sgd(code, curvature):
    """Plain SGD without momentum gets add_momentum before the LR bump; an optimizer with its
    own momentum (Adam, SGD at 0.9) or an unknown one gets the LR bump alone."""
    rule = get_rule(code)
    base = {"curvature": _probe(*curvature), **_steps()}
    plain = rule.check(Evidence({**base, "optimizer_momentum": 0.0}))
    assert plain is not None
    auto = [r.action for r in plain.remedies if r.automatic]
    assert auto[:2] == ["add_momentum", "lr_scale"]
    assert plain.remedies[0].params == {"momentum": 0.9}
    for momentum in (0.9, None):
        other = rule.check(Evidence({**base, "optimizer_momentum": momentum}))
        assert other is not None
        assert [r.action for r in other.remedies if r.automatic] == ["lr_scale"]


# -- overfitting on a short validation series (5 to 8 evaluations: the detector says "unknown")


def _short(val, train_drop=True):
    return _overfit(val, train_drop=train_drop, state="unknown")


@pytest.mark.parametrize(
    ("val", "p"),
    [
        ([1.0, 1.1, 1.2, 1.3, 1.4], 1 / 120),  # 5 evaluations, each above the last
        ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], 1 / 720),  # 6
        ([1.0, 1.2, 1.1, 1.3, 1.4], 5 / 120),  # one pair out of order: still below α
    ],
)
def test_overfitting_reads_a_rise_on_five_or_six_evaluations(val, p):
    f = get_rule("overfitting").check(_short(val))
    assert f is not None and f.cause == "overfitting"
    assert f.evidence["rise_p_value"] == pytest.approx(p)
    assert f.evidence["val_points"] == len(val)
    # a hint: below the bar at which the policy would stop the run and restore the best
    assert f.confidence < ROOT_CONFIDENCE
    assert not any(r.automatic for r in f.remedies)


def test_overfitting_reads_a_fall_then_a_rise_after_the_best():
    # the whole series does not rise (the first evaluation is the highest); after the best it does
    f = get_rule("overfitting").check(_short([2.0, 1.0, 1.1, 1.2, 1.3, 1.4]))
    assert f is not None
    assert f.evidence["best_step"] == 99 and f.evidence["rise_p_value"] <= 0.05


def test_overfitting_short_series_skips_nans():
    nan = math.nan
    f = get_rule("overfitting").check(_short([1.0, nan, 1.1, 1.2, nan, 1.3, 1.4]))
    assert f is not None and f.evidence["val_points"] == 5
    assert get_rule("overfitting").check(_short([1.0, nan, 1.1, nan, 1.2, 1.3])) is None  # 4 left


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val": [1.0, 1.1, 1.2, 1.3]},  # 4 points: 1/24 is all a rank test can say
        {"val": [1.5, 1.4, 1.3, 1.2, 1.1, 1.0]},  # still falling
        {"val": [1.0, 0.5, 0.4, 0.35, 0.36, 0.33]},  # falling, then noisy and flat
        {"val": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "train_drop": False},  # training loss flat too
        {"val": [1.0, 1.001, 1.002, 1.003, 1.004, 1.005]},  # a rise, but GL 0.4 % < 5 %
        {"val": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]},  # 9: the detector's business
    ],
)
def test_overfitting_short_series_stays_quiet(kwargs):
    assert get_rule("overfitting").check(_short(**kwargs)) is None


# -- between the rank test and the detector's rise test (9 to 31 evaluations)

PER_EPOCH = [2.0, 1.4, 1.1, 1.0, 1.04, 1.09, 1.13, 1.18, 1.22, 1.27, 1.31, 1.36]


def test_overfitting_reads_a_rise_the_detector_cannot_test_yet():
    # Twelve evaluations: too many for the short test, too few for the detector's rise windows
    # (32), and the rise (36 % above the best) never doubled, so the detector says "slow".
    f = get_rule("overfitting").check(_overfit(PER_EPOCH, state="slow"))
    assert f is not None and f.evidence["val_points"] == 8
    assert "latest 8" in f.evidence["test"] and "latest 8" in f.summary
    assert f.confidence < ROOT_CONFIDENCE  # a hint, as on the short series


@pytest.mark.parametrize(
    "val",
    [
        # the latest 8 rise (p 0.003), the 8 before them do not (p 0.10): seen at one look only
        [2.0, 1.4, 1.1, 1.3, 1.02, 1.0, 1.08, 1.04, 1.06, 1.1, 1.12, 1.14],
        # noise around a level
        [2.0, 1.4, 1.1, 1.0, 1.08, 1.01, 1.07, 1.02, 1.09, 1.0, 1.06, 1.03],
        # long enough for the detector's own rise test
        [2.0, 1.4, 1.1] + [1.0 + 0.02 * i for i in range(30)],
    ],
)
def test_overfitting_between_stays_quiet(val):
    assert get_rule("overfitting").check(_overfit(val, state="slow")) is None


def test_overfitting_short_test_needs_the_validation_detector_without_a_verdict():
    val = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    assert get_rule("overfitting").check(_overfit(val, state="improving")) is None
    assert get_rule("overfitting").check(_overfit(val, state="unknown", series="train")) is None


@pytest.mark.parametrize("n", [5, 6, 7, 8])
def test_short_rise_test_is_exact_at_its_level(n):
    """Over every ordering of n distinct values (each equally likely without a trend) the share
    the test calls rising is at most α: its false-positive level on any trend-free noise."""
    orders = list(itertools.permutations(range(n)))
    if n == 8:
        orders = orders[::7]  # a systematic seventh of 40,320, same margins
    rising = sum(rise_test(np.asarray(o, dtype=float)).rising for o in orders)
    assert 0 < rising / len(orders) <= ALPHA


def test_short_rise_test_false_positives_on_flat_noise_stay_below_alpha():
    rng = np.random.default_rng(7)
    rule = get_rule("overfitting")
    fired = 0
    for _ in range(600):
        val = 1.0 + 0.1 * rng.standard_normal(int(rng.integers(5, 9)))
        fired += rule.check(_short(val.tolist())) is not None
    assert fired / 600 <= ALPHA


def test_mann_kendall_exact_p_values():
    assert mann_kendall_p(10, 5) == pytest.approx(1 / 120)  # all 10 pairs in order
    assert mann_kendall_p(8, 5) == pytest.approx(5 / 120)  # one inversion: 1 + 4 orderings
    assert mann_kendall_p(-10, 5) == pytest.approx(1.0)
    assert mann_kendall_p(0, 1) == 1.0


# -- lr_decayed_early -------------------------------------------------------------------------


def _decayed(cut_at: int, loss_end: float, snr: float, steps: int = 300) -> Evidence:
    """A loss from 2.3 to ``loss_end`` and a schedule cut 800x at ``cut_at``."""
    rng = np.random.default_rng(0)
    s = np.arange(steps)
    loss = np.linspace(2.3, loss_end, steps) * (1 + 0.01 * rng.standard_normal(steps))
    lr = np.where(s < cut_at, 5e-3, 5e-3 / 800)
    return Evidence(
        {
            "loss": (s, loss),
            "lr/0": (s, lr),
            "grad_snr": (s[::50], np.full(s[::50].size, snr)),
            "detector_state": "plateau",
        },
        step=steps,
    )


def test_lr_decayed_early_names_a_cut_before_the_loss_could_fall():
    # The decade came at step 15 of 300: the high LR had no time, and the loss never moved.
    finding = get_rule("lr_decayed_early").check(_decayed(15, 2.29, snr=0.0))
    assert finding is not None and finding.evidence["reading"] == "cut_before_learning"
    assert finding.evidence["lr_decade_step"] == 15
    assert "before the loss had fallen at all" in finding.summary


def test_lr_decayed_early_clears_a_schedule_the_loss_had_time_under():
    # The same flat loss with the cut at step 60 (a fifth of the run): the loss did not fall
    # at the high LR either, so the schedule is not the cause.
    assert get_rule("lr_decayed_early").check(_decayed(60, 2.29, snr=0.0)) is None
    # A loss that fell under the high LR and now has no direction left is at a floor.
    assert get_rule("lr_decayed_early").check(_decayed(60, 1.2, snr=0.0)) is None
    fell = get_rule("lr_decayed_early").check(_decayed(60, 1.2, snr=0.5))
    assert fell is not None and fell.evidence["reading"] == "stalled_after_fall"
