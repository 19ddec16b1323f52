"""Each rule on hand-built evidence: fires, stays quiet, and edge values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unstuck.diagnose import Evidence, all_rules, explain, get_rule, run_rules
from unstuck.diagnose.causes.lr_too_low import RAISE_TARGET_RATIO
from unstuck.rescue import all_actions
from unstuck.types import Finding


def _series(values, start=0, stride=1):
    values = np.asarray(values, dtype=float)
    return (np.arange(start, start + stride * values.size, stride), values)


def _loss(kind: str, n: int = 64):
    """A training loss: ``stalled`` at its start, ``falling`` a decade, or ``bouncing`` step to
    step (each step overshoots the last) beyond its minibatch noise."""
    noise = np.random.default_rng(0).normal(0.0, 0.01, n)
    if kind == "stalled":
        return _series(2.3 + noise)
    if kind == "falling":
        return _series(2.3 * np.exp(-np.linspace(0.0, 2.5, n)) + noise * 0.1)
    return _series(1.5 + 0.3 * (-1.0) ** np.arange(n) + noise)


def test_lr_too_low_fires_on_tiny_updates_with_healthy_gradients():
    ev = Evidence({"update_ratio": _series([2e-6] * 8), "grad_norm": _series([0.5] * 32)}, step=400)
    finding = get_rule("lr_too_low").check(ev)
    assert finding is not None and finding.cause == "lr_too_low"
    assert finding.confidence > 0.8
    assert finding.remedies[0].automatic and finding.remedies[0].action == "lr_scale"
    assert finding.remedies[0].params["factor"] == pytest.approx(100.0)  # capped at two decades
    # the whole raise aims at the measured healthy ratio; the rest follows the first two decades
    assert finding.remedies[0].params["estimate"] == pytest.approx(RAISE_TARGET_RATIO / 2e-6)
    assert finding.evidence["update_ratio_median"] == pytest.approx(2e-6)


@pytest.mark.parametrize("ratio", [1e-3, 1e-4, 5e-2])
def test_lr_too_low_quiet_on_healthy_ratios(ratio):
    ev = Evidence({"update_ratio": _series([ratio] * 8), "grad_norm": _series([0.5] * 8)})
    assert get_rule("lr_too_low").check(ev) is None


def test_lr_too_low_for_plain_sgd_tries_momentum_before_the_raise():
    series = {"update_ratio": _series([2e-6] * 8), "grad_norm": _series([0.5] * 32)}
    plain = get_rule("lr_too_low").check(Evidence({**series, "optimizer_momentum": 0.0}))
    assert plain is not None
    assert [r.action for r in plain.remedies] == ["add_momentum", "lr_scale"]
    adam = get_rule("lr_too_low").check(Evidence({**series, "optimizer_momentum": None}))
    assert adam is not None and [r.action for r in adam.remedies] == ["lr_scale"]


@pytest.mark.parametrize(("peak", "fires"), [(0.5, True), (1e4, False)])
def test_lr_too_low_quiet_when_the_gradient_not_the_lr_made_the_steps_small(peak, fires):
    """Ratio 2e-6 at a gradient norm of 0.5: had the gradient stayed at a peak of 1e4, the same
    LR would move the weights by 4e-2 per step. A minimum reached, not a small LR."""
    ev = Evidence(
        {
            "update_ratio": _series([2e-6] * 8),
            "grad_norm": _series([0.5] * 32),
            "grad_norm_peak": peak,
        }
    )
    assert (get_rule("lr_too_low").check(ev) is not None) is fires


def test_lr_too_low_quiet_when_gradients_are_not_finite():
    ev = Evidence({"update_ratio": _series([1e-6] * 8), "grad_norm": _series([np.nan] * 8)})
    assert get_rule("lr_too_low").check(ev) is None


def test_lr_too_high_from_ratio_and_from_oscillation():
    high = Evidence(
        {"update_ratio": _series([0.5] * 8), "detector_state": "plateau", "loss": _loss("stalled")}
    )
    finding = get_rule("lr_too_high").check(high)
    assert finding is not None and finding.remedies[0].params["factor"] < 1
    assert finding.remedies[0].params["estimate"] == pytest.approx(0.02)
    # The same ratio on a loss that fell a decade and sits calm is a healthy run's noise floor.
    fell = Evidence({**high, "loss": _loss("falling")})
    assert get_rule("lr_too_high").check(fell) is None
    oscillating = Evidence(
        {
            "update_ratio": _series([1e-3] * 8),
            "detector_state": "oscillating",
            "loss": _loss("bouncing"),
        }
    )
    assert get_rule("lr_too_high").check(oscillating) is not None
    # The detector's oscillating call on a loss whose swings are minibatch noise: silent.
    noisy = Evidence({**oscillating, "loss": _loss("stalled")})
    assert get_rule("lr_too_high").check(noisy) is None
    calm = Evidence({"update_ratio": _series([1e-3] * 8), "detector_state": "plateau"})
    assert get_rule("lr_too_high").check(calm) is None


def test_lr_too_high_names_a_blow_up_the_run_never_recovered_from():
    """LR far too high: the loss jumped 10⁴× in the first steps, the units it killed leave tiny
    steps since; the root is the LR (not dead units, not an LR too low)."""
    loss = np.full(300, 2.4)
    loss[0], loss[3:6] = 2.3, 5e4
    ev = Evidence(
        {
            "update_ratio": _series([0.86, 5e-3, 2e-4, 9e-5, 8e-5], stride=32),
            "detector_state": "plateau",
            "loss": _series(loss),
        }
    )
    finding = get_rule("lr_too_high").check(ev)
    assert finding is not None and "blew up" in finding.summary
    assert finding.remedies[0].params["factor"] < 1
    recovered = loss.copy()
    recovered[-100:] = 0.5  # it came back well below where it started: no longer the verdict
    assert get_rule("lr_too_high").check(Evidence({**ev, "loss": _series(recovered)})) is None
    lr_low = get_rule("lr_too_low")
    assert "lr_too_high" in lr_low.symptom_of and "dead_relu" in lr_low.symptom_of


def test_lr_too_high_needs_half_the_recent_ratios_above_the_threshold():
    """One sample taken at a tiny init (ratio 98, the next 0.02) must not carry the verdict: the
    plain median of two would average them to 49."""
    stalled = _loss("stalled")
    grown = Evidence(
        {"update_ratio": _series([98.0, 0.02]), "detector_state": "plateau", "loss": stalled}
    )
    assert get_rule("lr_too_high").check(grown) is None
    persistent = Evidence(
        {"update_ratio": _series([98.0, 0.4]), "detector_state": "plateau", "loss": stalled}
    )
    finding = get_rule("lr_too_high").check(persistent)
    assert finding is not None
    assert finding.evidence["update_ratio_median"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("optimizer", "state", "loss", "fires"),
    [
        ("AdamW", "plateau", "stalled", True),
        ("AdamW", "hidden_progress", "stalled", True),
        ("Adam", "slow", "bouncing", True),
        # Adam's large early ratio in a run that goes on to converge: the loss still falls.
        ("Adam", "slow", "falling", False),
        ("AdamW", "plateau", "falling", False),
        ("AdamW", "improving", "stalled", False),  # a loss still falling well
        (
            "SGD",
            "plateau",
            "stalled",
            False,
        ),  # SGD's ratio may be a net growing out of a small init
    ],
)
def test_lr_too_high_above_1e_2_for_an_adaptive_optimizer_whose_loss_is_hurt(
    optimizer, state, loss, fires
):
    ev = Evidence(
        {
            "update_ratio": _series([0.04] * 8),
            "detector_state": state,
            "optimizer_type": optimizer,
            "loss": _loss(loss),
        }
    )
    finding = get_rule("lr_too_high").check(ev)
    assert (finding is not None) is fires
    if finding is not None:
        # Adam's ratio scales with the LR: the cut brings it to the healthy 1e-3.
        assert finding.remedies[0].params["estimate"] == pytest.approx(1e-3 / 0.04)
        # The weights' motion on a flat loss is then the finding's symptom, not progress.
        assert finding.evidence["explains_weight_motion"] is (state == "hidden_progress")


def test_lr_too_high_quiet_for_adam_at_a_healthy_ratio():
    ev = Evidence(
        {
            "update_ratio": _series([5e-3] * 8),
            "detector_state": "plateau",
            "optimizer_type": "AdamW",
        }
    )
    assert get_rule("lr_too_high").check(ev) is None


def _layer_evidence(first, last):
    norms = np.array([[first, 1.0, 0.5, last, 0.1]] * 4)
    return Evidence(
        {
            "grad_norm_per_tensor": norms,
            "param_names": ["0.weight", "0.bias", "2.weight", "4.weight", "4.bias"],
            "param_ndims": [2, 1, 2, 2, 1],
        }
    )


def test_vanishing_and_exploding_gradients_by_layer_ratio():
    assert get_rule("vanishing_gradients").check(_layer_evidence(1e-6, 1.0)) is not None
    assert get_rule("vanishing_gradients").check(_layer_evidence(1e-2, 1.0)) is None
    # the first-layer norm must also be tiny in absolute terms (AUTOTRAINER's second condition)
    assert get_rule("vanishing_gradients").check(_layer_evidence(1e-3, 10.0)) is None
    exploding = get_rule("exploding_gradients").check(_layer_evidence(100.0, 1.0))
    assert exploding is not None and exploding.evidence["ratio"] == pytest.approx(100.0)
    assert get_rule("exploding_gradients").check(_layer_evidence(50.0, 1.0)) is None


def test_nonfinite_and_frozen_parameters():
    ev = Evidence({"nonfinite_loss": _series([0, 3]), "nonfinite_grad": _series([0, 1])})
    finding = get_rule("nonfinite").check(ev)
    assert finding is not None and finding.evidence["nonfinite_losses_in_window"] == 3
    assert get_rule("nonfinite").check(Evidence({"nonfinite_loss": _series([2, 0])})) is None
    frozen = get_rule("frozen_parameters").check(
        Evidence({"params_not_in_optimizer": ["head.weight"]})
    )
    assert frozen is not None and "head.weight" in frozen.summary
    assert get_rule("frozen_parameters").check(Evidence({"params_not_in_optimizer": []})) is None


def test_frozen_parameters_by_requires_grad_needs_random_weights_or_a_hurt_run():
    rule = get_rule("frozen_parameters")
    base = {"params_not_in_optimizer": [], "params_frozen": ["backbone.0.weight"]}
    # Frozen at a uniform random draw: never trained, a bug from step 0.
    untrained = rule.check(
        Evidence(
            {
                **base,
                "params_frozen_share": 0.4,
                "params_frozen_untrained": ["backbone.0.weight"],
                "params_frozen_untrained_share": 0.4,
            }
        )
    )
    assert untrained is not None and untrained.evidence["reading"] == "untrained"
    assert untrained.confidence == pytest.approx(0.9)
    # Frozen weights that are not a random draw (pretrained): silent while the loss is fine ...
    pretrained = {**base, "params_frozen_share": 0.4, "params_frozen_untrained": []}
    assert rule.check(Evidence({**pretrained, "loss": _series([1.0, 0.5, 0.2])})) is None
    # ... and a hint-strength finding once the loss is hurt.
    hurt = rule.check(Evidence({**pretrained, "loss": _series([1.0, float("nan")])}))
    assert hurt is not None and hurt.evidence["reading"] == "requires_grad"
    assert hurt.evidence["loss"] == "non-finite"
    assert 0.6 < hurt.confidence < untrained.confidence
    # Left out of the optimizer still wins: that reading is certain.
    both = rule.check(Evidence({**pretrained, "params_not_in_optimizer": ["head.weight"]}))
    assert both is not None and both.confidence == 1.0


def test_at_uniform_init_tells_a_fresh_draw_from_trained_weights():
    from unstuck.integrations._facts import at_uniform_init

    torch.manual_seed(0)
    assert at_uniform_init(torch.nn.Linear(64, 32).weight)  # kaiming_uniform_(a=sqrt(5))
    assert at_uniform_init(torch.nn.Conv2d(8, 16, 3).weight)
    assert at_uniform_init(torch.nn.init.xavier_uniform_(torch.empty(96, 32)))
    assert not at_uniform_init(torch.randn(64, 64) * 0.02)  # a Gaussian (most pretrained)
    assert not at_uniform_init(torch.nn.Linear(8, 4).weight)  # too few values to tell
    assert not at_uniform_init(torch.nn.Linear(64, 32).bias)  # 1-d: fan-in unknown
    layer = torch.nn.Linear(64, 64)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    x, y = torch.randn(512, 64), torch.randn(512, 64)
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not at_uniform_init(layer.weight)  # trained: no longer a flat bounded draw


def test_lr_too_low_judges_a_short_run_by_its_early_ratios_at_a_lower_bar():
    rule = get_rule("lr_too_low")
    # One regular ratio (step 0) and the early ones (steps 1, 2, 4, 8, 16).
    base = {"update_ratio": _series([1e-7]), "grad_norm": _series([0.3] * 4, stride=8)}
    tiny = rule.check(Evidence({**base, "update_ratio_early": _series([1e-7] * 5)}))
    assert tiny is not None and tiny.evidence["reading"] == "short_run"
    # 1e-5 is a decade below the bar of a long run, but not the two a short run needs.
    short = {**base, "update_ratio": _series([1e-5])}
    assert rule.check(Evidence({**short, "update_ratio_early": _series([1e-5] * 5)})) is None
    assert rule.check(Evidence(base)) is None  # one ratio alone decides nothing
    long_run = rule.check(Evidence({**base, "update_ratio": _series([1e-5] * 8)}))
    assert long_run is not None and long_run.evidence["reading"] == "ratio"


def test_frozen_parameters_names_tensors_the_graph_never_reaches():
    rule = get_rule("frozen_parameters")
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    ev = {"params_not_in_optimizer": [], "param_names": names}
    cut = rule.check(
        Evidence({**ev, "params_without_grad": {"indices": [0, 1], "sampled_steps": 3}})
    )
    assert cut is not None and cut.evidence["reading"] == "no_gradient"
    assert cut.evidence["parameters"] == ["0.weight", "0.bias"] and cut.confidence == 0.9
    # Two samples are too few; no tensor with a gradient at all is a loop that reads none.
    early = {"params_without_grad": {"indices": [0, 1], "sampled_steps": 2}}
    assert rule.check(Evidence({**ev, **early})) is None
    none = {"params_without_grad": {"indices": [0, 1, 2, 3], "sampled_steps": 9}}
    assert rule.check(Evidence({**ev, **none})) is None


def test_run_rules_ranks_and_respects_continuous_only():
    ev = Evidence(
        {
            "update_ratio": _series([1e-7] * 8),
            "grad_norm": _series([0.3] * 8),
            "params_not_in_optimizer": ["x"],
        }
    )
    findings = run_rules(ev)
    assert [f.cause for f in findings][:2] == ["frozen_parameters", "lr_too_low"]
    assert [f.cause for f in run_rules(ev, continuous_only=True)] == ["frozen_parameters"]


def test_explain_includes_evidence_and_remedy():
    ev = Evidence({"update_ratio": _series([1e-6] * 8), "grad_norm": _series([1.0] * 8)}, step=7)
    finding = get_rule("lr_too_low").check(ev)
    text = explain(finding)
    assert "lr_too_low" in text and "update_ratio_median" in text and "automatic: lr_scale" in text
    with pytest.raises(KeyError, match="unknown cause code"):
        explain("not_a_cause")


def test_findings_reject_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        Finding("x", 1.5, {}, 0, "")
    with pytest.raises(ValueError, match="confidence"):
        Finding("x", float("nan"), {}, 0, "")


def test_every_rule_has_a_finding_shape_on_its_own_evidence(tmp_path):
    # Weights-only loading of every finding this file's evidence can produce.
    ev = Evidence(
        {
            "update_ratio": _series([1e-7] * 8),
            "grad_norm": _series([0.3] * 8),
            "params_not_in_optimizer": ["w"],
            "nonfinite_loss": _series([1]),
            **_layer_evidence(1e-7, 1.0),
        }
    )
    findings = run_rules(ev)
    assert {f.cause for f in findings} >= {"lr_too_low", "frozen_parameters", "nonfinite"}
    torch.save([f.to_dict() for f in findings], tmp_path / "f.pt")
    loaded = torch.load(tmp_path / "f.pt", weights_only=True)
    assert [Finding.from_dict(d) for d in loaded] == findings
    assert set(all_rules()) >= {f.cause for f in findings}
    automatic = {r.action for f in findings for r in f.remedies if r.automatic}
    assert automatic and automatic <= set(all_actions())


def test_lr_scale_validates_its_factor():
    action = all_actions()["lr_scale"]
    for bad in ({}, {"factor": 0}, {"factor": -2.0}, {"factor": float("inf")}, {"factor": "3"}):
        with pytest.raises(ValueError, match="factor"):
            action.validate(bad)


def test_findings_within_the_tie_margin_rank_root_first_and_name_each_other():
    """dead_relu 0.88 and vanishing_gradients 0.95 swap on another CPU's kernels: within
    TIE_MARGIN the order is root before symptom, not the float difference."""
    from unstuck.diagnose.base import TIE_MARGIN, _rank
    from unstuck.types import Remedy

    rules = all_rules()
    change = Remedy("change_architecture")

    def finding(cause: str, confidence: float) -> Finding:
        return Finding(cause, confidence, {}, 0, cause, remedies=(change,))

    for dead, vanishing in ((0.88, 0.95), (0.95, 0.88)):
        ranked = _rank(
            [finding("vanishing_gradients", vanishing), finding("dead_relu", dead)], rules
        )
        assert [f.cause for f in ranked] == ["dead_relu", "vanishing_gradients"]
        assert ranked[0].evidence["tied_with"] == ["vanishing_gradients"]
        assert ranked[0].evidence["shared_remedies"] == ["change_architecture"]
    apart = _rank(
        [finding("vanishing_gradients", 0.95), finding("dead_relu", 0.95 - TIE_MARGIN - 0.01)],
        rules,
    )
    assert [f.cause for f in apart] == ["vanishing_gradients", "dead_relu"]
    assert "tied_with" not in apart[0].evidence


def test_calibration_scales_a_rule_monotonically_and_keeps_hints_below_half(monkeypatch):
    from unstuck.diagnose import calibration

    monkeypatch.setattr(calibration, "SCALES", {"lr_too_high": 0.5, "over_clipping": 1.5})
    raw = np.linspace(0.0, 1.0, 101)
    down = [calibration.calibrated("lr_too_high", float(p)) for p in raw]
    up = [calibration.calibrated("over_clipping", float(p)) for p in raw]
    assert all(a <= b for a, b in itertools.pairwise(down))
    assert all(a <= b for a, b in itertools.pairwise(up))
    assert calibration.calibrated("lr_too_high", 0.8) == pytest.approx(0.4)
    assert calibration.calibrated("over_clipping", 0.45) < 0.5  # a hint stays a hint
    assert calibration.calibrated("over_clipping", 0.8) == calibration.CAP
    assert calibration.calibrated("nonfinite", 1.0) == 1.0  # no scale: its own value
    # run_rules applies it and keeps the rule's own number.
    ev = Evidence(
        {"update_ratio": _series([0.5] * 8), "detector_state": "plateau", "loss": _loss("stalled")}
    )
    raw_finding = get_rule("lr_too_high").check(ev)
    found = {f.cause: f for f in run_rules(ev)}["lr_too_high"]
    assert raw_finding is not None
    assert found.confidence == pytest.approx(raw_finding.confidence * 0.5)
    assert found.evidence["raw_confidence"] == pytest.approx(raw_finding.confidence)


def test_a_root_can_declare_the_symptoms_it_explains():
    """``explains`` on the root ranks its symptom below it, as ``symptom_of`` on the symptom
    does, so a new root cause needs no edit to the rule it explains."""
    from unstuck.diagnose.base import Rule, roots_of

    class Root(Rule):
        code = "a_root"
        explains = frozenset({"a_symptom"})

    class Symptom(Rule):
        code = "a_symptom"

    rules = {"a_root": Root(), "a_symptom": Symptom()}
    assert roots_of("a_symptom", rules) == {"a_root"}
    assert roots_of("a_root", rules) == frozenset()
