"""The data and loss rules on hand-built evidence: fire, stay quiet, edges, broken evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unstuck.diagnose import Evidence, get_rule, run_rules

LN10 = math.log(10)


def _groups(**over):
    """A window where 20 % of samples are mislabelled (confidently wrong) and hold the loss."""
    base = {
        "step": 500,
        "n": 1000,
        "n_classes": 10,
        "chance_loss": LN10,
        "window_mean": 0.9,
        "wrong_fraction": 0.2,
        "wrong_share": 0.75,
        "wrong_median": 3.9,
        "wrong_rest_median": 0.1,
        "wrong_purity": 0.15,
        "wrong_class": 3,
        "wrong_ids": [5, 9, 11],
        "unlearned_fraction": 0.22,
        "unlearned_share": 0.8,
        "unlearned_median": 3.7,
        "unlearned_rest_median": 0.09,
        "unlearned_purity": 0.15,
        "unlearned_class": 3,
        "wrong_of_unlearned": 0.9,
        "wrong_change": -0.02,
        "unlearned_change": 0.01,
    }
    base.update(over)
    return Evidence({"sample_groups": base}, step=500)


def _hard(**over):
    """A mixed-class fifth of the data stays unsure (loss between ln 2 and ln C)."""
    values = {
        "wrong_fraction": 0.02,
        "wrong_share": 0.1,
        "wrong_median": 2.6,
        "unlearned_fraction": 0.2,
        "unlearned_share": 0.8,
        "unlearned_median": 1.5,
        "unlearned_rest_median": 0.01,
        "unlearned_purity": 0.17,
        "wrong_of_unlearned": 0.12,
    }
    values.update(over)
    return _groups(**values)


# ------------------------------------------------------------------------------ label_noise


def test_label_noise_fires_and_reports_ids():
    finding = get_rule("label_noise").check(_groups())
    assert finding is not None and finding.cause == "label_noise"
    assert 0.7 < finding.confidence <= 0.95
    assert finding.evidence["ids"] == [5, 9, 11]
    assert finding.remedies[0].params["ids"] == [5, 9, 11]
    assert not finding.remedies[0].automatic


def test_label_noise_confidence_grows_with_share_and_margin():
    weak = get_rule("label_noise").check(_groups(wrong_share=0.52, wrong_median=2.4))
    strong = get_rule("label_noise").check(_groups(wrong_share=0.9, wrong_median=5.0))
    assert weak is not None and strong is not None
    assert 0.5 <= weak.confidence < 0.7 < strong.confidence


@pytest.mark.parametrize(
    "over",
    [
        {"wrong_share": 0.49},  # does not hold most of the loss
        {"wrong_median": LN10},  # not worse than chance
        {"wrong_fraction": 0.009},  # a handful of outliers
        {"wrong_fraction": 0.6},  # not a subset: the task is failing
        {"wrong_of_unlearned": 0.4},  # the unlearned are mostly unsure, not wrong
        {"wrong_rest_median": 0.75},  # the rest is not learned yet (above ln 2)
        {"n": 99},  # too few samples in the window
        {"wrong_change": -0.2},  # still falling: being learned, not stuck
        {"wrong_change": float("nan")},
    ],
)
def test_label_noise_quiet(over):
    assert get_rule("label_noise").check(_groups(**over)) is None


def test_label_noise_edges_fire_at_the_thresholds():
    assert get_rule("label_noise").check(_groups(wrong_share=0.5)) is not None
    assert get_rule("label_noise").check(_groups(wrong_fraction=0.01)) is not None
    assert get_rule("label_noise").check(_groups(wrong_rest_median=0.38)) is not None


def _heavy_noise(train=1.8, val=1.0, **over):
    """48 % of the training labels moved: most samples unlearned, a third worse than chance,
    the clean validation labels fitted better than the training ones."""
    values = {
        "wrong_fraction": 0.27,
        "wrong_share": 0.47,  # under "most": the small-group reading stays quiet
        "wrong_rest_median": 1.05,
        "unlearned_fraction": 0.78,
        "unlearned_purity": 0.13,
        "unlearned_change": -0.04,
        "wrong_of_unlearned": 0.34,
    }
    values.update(over)
    ev = _groups(**values)
    n = 64
    return Evidence(
        {
            **ev,
            "loss": (np.arange(n), np.full(n, train)),
            "val_loss": (np.arange(4), np.full(4, val)),
        },
        step=ev.step,
    )


def test_label_noise_reads_a_training_loss_above_the_validation_loss():
    finding = get_rule("label_noise").check(_heavy_noise())
    assert finding is not None and finding.evidence["reading"] == "train_above_val"
    assert finding.evidence["train_over_val"] == pytest.approx(1.8)
    assert finding.evidence["ids"] == [5, 9, 11]
    assert 0.6 < finding.confidence <= 0.8


@pytest.mark.parametrize(
    "over",
    [
        {"train": 1.2},  # 1.2x: within what healthy runs show
        {"unlearned_purity": 0.7},  # one class: a class problem
        {"wrong_of_unlearned": 0.2},  # unsure rather than wrong: a hard subset
        {"unlearned_change": -0.3},  # still being learned
        {"val": float("nan")},  # no validation
    ],
)
def test_label_noise_train_above_val_needs_the_whole_pattern(over):
    assert get_rule("label_noise").check(_heavy_noise(**over)) is None


# ------------------------------------------------------------------------------ hard_subset


def test_hard_subset_fires_on_a_mixed_unsure_group():
    finding = get_rule("hard_subset").check(_hard())
    assert finding is not None and finding.cause == "hard_subset"
    assert 0.8 <= finding.confidence <= 0.9
    assert get_rule("label_noise").check(_hard()) is None  # and label noise stays quiet


@pytest.mark.parametrize(
    "over",
    [
        {"wrong_of_unlearned": 0.3},  # too many worse than chance: label noise's side
        {"unlearned_median": LN10 + 0.1},
        {"unlearned_purity": 0.6},  # one class: a class problem
        {"unlearned_fraction": 0.04},  # not sizeable
        {"unlearned_share": 0.4},
        {"unlearned_rest_median": 0.2},  # everything is still learning
        {"unlearned_change": -0.3},  # the slow tail of a healthy run, still falling
    ],
)
def test_hard_subset_quiet(over):
    assert get_rule("hard_subset").check(_hard(**over)) is None


def test_label_noise_and_hard_subset_never_fire_on_the_same_window():
    for share in np.linspace(0.0, 1.0, 21):
        ev = _hard(wrong_of_unlearned=float(share), unlearned_median=1.5 + 2 * share)
        fired = {f.cause for f in run_rules(ev)}
        assert len(fired & {"label_noise", "hard_subset"}) <= 1


def test_hard_subset_and_label_noise_are_explained_by_class_imbalance():
    rare = {"class_counts": {0: 300, 1: 290, 2: 10}}
    rare["class_loss_history"] = {0: [0.1] * 3, 1: [0.1] * 3, 2: [3.0] * 3}
    for ev in (_hard(), _groups()):
        merged = Evidence({**dict(ev), **rare}, step=ev.step)
        findings = {f.cause: f for f in run_rules(merged)}
        assert findings["class_imbalance"].confidence >= 0.5
        symptom = "hard_subset" if "hard_subset" in findings else "label_noise"
        assert findings[symptom].confidence < 0.5
        assert findings[symptom].evidence["explained_by"] == ["class_imbalance"]


# --------------------------------------------------------------------------- class_imbalance


def _classes(counts, histories):
    return Evidence({"class_counts": counts, "class_loss_history": histories}, step=900)


def test_class_imbalance_fires_when_rare_classes_stay_unlearned():
    counts = {0: 300, 1: 280, 2: 12}
    hist = {0: [0.3, 0.2, 0.1], 1: [0.3, 0.2, 0.12], 2: [3.0, 3.1, 2.9]}
    finding = get_rule("class_imbalance").check(_classes(counts, hist))
    assert finding is not None
    assert finding.evidence["minority_classes"] == [2]
    assert finding.evidence["count_ratio"] == pytest.approx(25.0)
    assert 0.6 <= finding.confidence <= 0.9


@pytest.mark.parametrize(
    ("counts", "hist"),
    [
        ({0: 100, 1: 10}, {0: [0.1] * 3, 1: [3.0] * 3}),  # ratio 10: not > 10
        ({0: 300, 1: 12}, {0: [0.1] * 3, 1: [3.0, 0.5, 3.0]}),  # learned once: not stalled
        ({0: 300, 1: 12}, {0: [0.1, 0.9, 0.1], 1: [3.0] * 3}),  # majority not learned either
        ({0: 300, 1: 12}, {0: [0.1] * 3, 1: [3.0] * 2}),  # too short a history
        ({0: 300, 1: 12}, {0: [0.1] * 3, 1: [3.0, np.nan, 3.0]}),
        ({0: 300}, {0: [0.1] * 3}),
        ({}, {}),
    ],
)
def test_class_imbalance_quiet(counts, hist):
    assert get_rule("class_imbalance").check(_classes(counts, hist)) is None


def test_class_imbalance_needs_the_minority_below_a_uniform_guess():
    # Ten classes (chance ln 10 = 2.30): rare classes at loss 1.5 are unlearned (> ln 2) but
    # get more than a uniform guess, a skew the task has and the model is learning; at 3.0
    # they get less than 1/10, i.e. the model has settled on the frequent classes.
    counts = {c: 300 for c in range(8)} | {8: 10, 9: 10}
    learned = {c: [0.1] * 3 for c in range(8)}
    learning = get_rule("class_imbalance").check(
        _classes(counts, learned | {8: [1.6, 1.5, 1.4], 9: [1.6, 1.5, 1.4]})
    )
    assert learning is None
    settled = get_rule("class_imbalance").check(
        _classes(counts, learned | {8: [3.0] * 3, 9: [3.1] * 3})
    )
    assert settled is not None
    assert settled.evidence["chance_loss"] == pytest.approx(np.log(10))


def test_class_imbalance_just_above_the_ratio_fires():
    hist = {0: [0.1] * 3, 1: [3.0] * 3}
    assert get_rule("class_imbalance").check(_classes({0: 101, 1: 10}, hist)) is not None


# ------------------------------------------------------------------ truncated / repeated data


def _coverage(reach, coverage, new_last, overlap_last, epochs=3, per_step=32.0):
    return Evidence(
        {
            "data_reach": reach,
            "epoch_coverage": [coverage] * epochs,
            "epoch_new_ids": [reach] + [new_last] * (epochs - 1),
            "epoch_overlap": [0.0] + [overlap_last] * (epochs - 1),
            "samples_per_step": per_step,
        },
        step=1000,
    )


def test_truncated_data_fires_on_a_fixed_quarter():
    finding = get_rule("truncated_data").check(_coverage(0.25, 0.25, 0.0, 1.0))
    assert finding is not None and finding.evidence["data_reach"] == 0.25
    assert finding.confidence >= 0.9
    assert get_rule("repeated_data").check(_coverage(0.25, 0.25, 0.0, 1.0)) is None


def test_repeated_data_fires_on_the_same_batch():
    ev = _coverage(0.02, 0.02, 0.0, 1.0)
    finding = get_rule("repeated_data").check(ev)
    assert finding is not None and finding.evidence["draws_per_sample"] == pytest.approx(50.0)
    assert get_rule("truncated_data").check(ev) is None


@pytest.mark.parametrize(
    "args",
    [
        (1.0, 0.75, 0.0, 1.0),  # shuffled loader: everything reached
        (0.95, 0.95, 0.0, 1.0),  # a tail never drawn, under a tenth of the data
        (0.6, 0.63, 0.2, 0.6),  # sampling with replacement: still reaching new ids
    ],
)
def test_coverage_rules_quiet_on_normal_loaders(args):
    ev = _coverage(*args)
    assert get_rule("truncated_data").check(ev) is None
    assert get_rule("repeated_data").check(ev) is None


def test_coverage_rules_edges():
    assert get_rule("truncated_data").check(_coverage(0.9, 0.9, 0.0, 1.0)) is not None
    assert get_rule("truncated_data").check(_coverage(0.91, 0.91, 0.0, 1.0)) is None
    assert get_rule("truncated_data").check(_coverage(0.5, 0.5, 0.011, 1.0)) is None
    assert get_rule("repeated_data").check(_coverage(0.1, 0.1, 0.0, 1.0)) is not None
    assert get_rule("truncated_data").check(_coverage(0.1, 0.1, 0.0, 1.0)) is None
    assert get_rule("repeated_data").check(_coverage(0.05, 0.05, 0.0, 0.89)) is None
    assert get_rule("repeated_data").check(_coverage(0.05, 0.05, 0.0, 1.0, epochs=1)) is None


def test_coverage_rules_are_continuous():
    assert get_rule("truncated_data").continuous and get_rule("repeated_data").continuous
    causes = {f.cause for f in run_rules(_coverage(0.25, 0.25, 0.0, 1.0), continuous_only=True)}
    assert "truncated_data" in causes


# ------------------------------------------------------------------ loss_component_dominance


def _components(ce, recon, ce_start=2.3, recon_start=2000.0, n=60):
    steps = np.arange(n)
    return Evidence(
        {
            "loss_component/ce": (steps, np.full(n, ce)),
            "loss_component/recon": (steps, np.full(n, recon)),
            "loss_components_start": {"ce": ce_start, "recon": recon_start},
        },
        step=n,
    )


def test_dominance_fires_when_the_small_term_is_stuck():
    finding = get_rule("loss_component_dominance").check(_components(2.2, 1800.0))
    assert finding is not None and finding.evidence["dominant"] == "recon"
    assert finding.evidence["stalled"] == ["ce"]
    assert finding.evidence["ratio"] == pytest.approx(1800.0 / 2.2)
    assert finding.confidence > 0.8


@pytest.mark.parametrize(
    ("ce", "recon"),
    [
        (2.2, 21.0),  # under an order of magnitude
        (0.5, 1800.0),  # the small term is being learned (0.5 < half of 2.3)
        (np.nan, 1800.0),
    ],
)
def test_dominance_quiet(ce, recon):
    assert get_rule("loss_component_dominance").check(_components(ce, recon)) is None


def test_dominance_edges_and_broken_evidence():
    rule = get_rule("loss_component_dominance")
    assert rule.check(_components(2.0, 20.0)) is not None  # exactly 10x
    assert rule.check(_components(1.15, 1800.0)) is not None  # exactly half its start
    assert rule.check(Evidence({"loss_components_start": {"ce": 1.0}})) is None
    assert rule.check(Evidence({"loss_components_start": "x"})) is None
    assert rule.check(_components(2.2, 1800.0, ce_start=float("nan"))) is None


def _served(ce, penalty, state, ce_start=2.3, penalty_start=9.0):
    ev = _components(ce, penalty, ce_start=ce_start, recon_start=penalty_start)
    return Evidence({**ev, "detector_state": state}, step=ev.step)


def test_a_term_that_won_and_then_looks_small_is_named_on_a_stall():
    # A logit penalty summed over the batch held the logits at 0: it fell 30x from its start
    # while the task term never moved. Its value is now small; its gradient ruled.
    rule = get_rule("loss_component_dominance")
    finding = rule.check(_served(2.29, 0.3, "plateau"))
    assert finding is not None and finding.evidence["reading"] == "served"
    assert finding.evidence["dominant"] == "recon" and finding.evidence["stalled"] == ["ce"]
    assert finding.evidence["fell_by"] == pytest.approx(30.0)
    assert 0.6 < finding.confidence < 0.8
    # On a crawl too: the total still falls only because the served term does.
    assert rule.check(_served(2.29, 0.3, "slow")) is not None


def _blown(ce, penalty):
    n = len(ce)
    steps = np.arange(n)
    return Evidence(
        {
            "loss_component/ce": (steps, np.asarray(ce, dtype=float)),
            "loss_component/penalty": (steps, np.asarray(penalty, dtype=float)),
            "loss_components_start": {"ce": 2.3, "penalty": 5.0},
        },
        step=n,
    )


def test_a_term_on_the_wrong_scale_that_blew_up_first_is_the_root_of_the_nan():
    nan = float("nan")
    ev = _blown([2.29, 3.0, 6.7, 1.3e6, nan, nan], [12.0, 1700.0, 7870.0, 4.8e14, nan, nan])
    finding = get_rule("loss_component_dominance").check(ev)
    assert finding is not None and finding.evidence["reading"] == "blew_up"
    assert finding.evidence["dominant"] == "penalty"
    assert finding.evidence["grew_at_point"] == 1
    assert finding.evidence["start_share"] == pytest.approx(12.0 / 14.29)
    # Found with them, it explains the non-finite loss and the LR that was too high for it.
    ranked = run_rules(
        Evidence({**ev, "loss": (np.arange(6), np.asarray(ev["loss_component/ce"]))}, step=6)
    )
    by_cause = {f.cause: f for f in ranked}
    assert ranked[0].cause == "loss_component_dominance"
    if "nonfinite" in by_cause:
        assert by_cause["nonfinite"].evidence["explained_by"] == ["loss_component_dominance"]


@pytest.mark.parametrize(
    ("ce", "penalty"),
    [
        # An LR too high: a weight penalty that started small grows first. Not this cause.
        ([2.3, 2.6, 9.0, 4e3, float("nan")], [0.01, 0.2, 5.0, 3e4, float("nan")]),
        # The task term grew first.
        ([2.3, 40.0, 900.0, 1e9, float("nan")], [5.0, 6.0, 80.0, 1e12, float("nan")]),
    ],
)
def test_a_blow_up_needs_the_leading_term_to_start_large_and_lead(ce, penalty):
    assert get_rule("loss_component_dominance").check(_blown(ce, penalty)) is None


def test_a_term_that_grew_without_a_blow_up_is_plain_dominance():
    ev = _blown([2.3, 2.2, 2.1, 2.0, 1.9], [12.0, 1700.0, 7870.0, 4e5, 5e5])
    finding = get_rule("loss_component_dominance").check(ev)
    assert finding is not None and "reading" not in finding.evidence
    assert finding.evidence["dominant"] == "penalty"


@pytest.mark.parametrize(
    ("ce", "penalty", "state", "ce_start", "penalty_start"),
    [
        (2.29, 0.3, "improving", 2.3, 9.0),  # the loss is not stalled
        (1.9, 0.3, "plateau", 2.3, 9.0),  # the task term moved (more than 10 % below its start)
        (2.29, 1.5, "plateau", 2.3, 9.0),  # nothing fell an order of magnitude
        (2.29, 0.3, "plateau", 1.5, 9.0),  # the task term rose from its start: it moved
        (2.29, 0.3, "plateau", 2.3, 1.0),  # the penalty fell, but not by a decade
    ],
)
def test_a_served_term_needs_the_whole_pattern(ce, penalty, state, ce_start, penalty_start):
    ev = _served(ce, penalty, state, ce_start=ce_start, penalty_start=penalty_start)
    assert get_rule("loss_component_dominance").check(ev) is None


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "code",
    [
        "label_noise",
        "hard_subset",
        "class_imbalance",
        "truncated_data",
        "repeated_data",
        "loss_component_dominance",
    ],
)
@pytest.mark.parametrize(
    "data",
    [
        {},
        {"sample_groups": {}},
        {"sample_groups": {"n": float("nan"), "wrong_fraction": "x"}},
        {"class_counts": {0: float("nan")}, "class_loss_history": {0: []}},
        {
            "data_reach": float("nan"),
            "epoch_coverage": [],
            "epoch_new_ids": [],
            "epoch_overlap": [],
            "samples_per_step": 0.0,
        },
        {"loss_components_start": {"a": None, "b": 1.0}},
    ],
)
def test_rules_never_raise_on_broken_evidence(code, data):
    assert get_rule(code).check(Evidence(data, step=3)) is None
