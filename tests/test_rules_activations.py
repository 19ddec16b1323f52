"""The activation-group rules on hand-built evidence: fire, stay quiet, edges, NaN/empty."""

from __future__ import annotations

import numpy as np
import pytest

from unstuck.diagnose import Evidence, get_rule, run_rules
from unstuck.diagnose.base import ROOT_CONFIDENCE
from unstuck.rescue import all_actions


def _series(values, stride=32):
    values = np.asarray(values, dtype=float)
    return (np.arange(0, stride * values.size, stride), values)


def _check(code, data, step=500):
    return get_rule(code).check(Evidence(data, step=step))


def _assert_well_formed(finding, code):
    assert finding is not None and finding.cause == code
    assert 0.0 <= finding.confidence <= 1.0
    assert finding.summary and finding.step == 500
    for remedy in finding.remedies:
        assert not remedy.automatic or remedy.action in all_actions()


# -- dead_relu ------------------------------------------------------------------------------


def test_dead_relu_fires_on_a_dead_layer_and_lowers_the_lr_when_units_died_in_training():
    data = {
        "act_dead_fraction": _series([0.05, 0.9, 1.0, 1.0]),
        "act_dead_overall": _series([0.02, 0.4, 0.5, 0.5]),
        "act_dead_layers": {"1": 0.1, "3": 1.0},
    }
    finding = _check("dead_relu", data)
    _assert_well_formed(finding, "dead_relu")
    assert finding.confidence == pytest.approx(0.9)
    assert finding.evidence["worst_layer"] == "3" and finding.evidence["died_in_training"]
    assert finding.remedies[0].automatic and finding.remedies[0].params["factor"] < 1
    assert "100%" in finding.summary


def test_dead_relu_from_init_is_reported_without_an_lr_cut():
    finding = _check("dead_relu", {"act_dead_fraction": _series([1.0, 1.0])})
    _assert_well_formed(finding, "dead_relu")
    assert not any(r.automatic for r in finding.remedies)


@pytest.mark.parametrize(("share", "fires"), [(0.69, False), (0.70, True), (0.71, True)])
def test_dead_relu_threshold_edge(share, fires):
    finding = _check("dead_relu", {"act_dead_fraction": _series([share] * 3)})
    assert (finding is not None) == fires
    if fires:
        assert 0.59 <= finding.confidence <= 0.62


def test_dead_relu_reads_the_latest_window_not_a_stale_median():
    assert _check("dead_relu", {"act_dead_fraction": _series([1.0] * 7 + [0.1])}) is None


def test_dead_relu_needs_enough_outputs_per_unit_behind_the_dead_share():
    """At batch size 1 a 4-batch window holds 4 outputs per unit: a sparse unit looks dead. The
    rule reads the latest points whose windows hold 64 outputs together, and their minimum."""
    dead = {"act_dead_fraction": _series([1.0, 1.0, 1.0])}
    few = {**dead, "act_dead_observations": _series([4.0, 4.0, 4.0])}
    assert _check("dead_relu", few) is None
    many = {**dead, "act_dead_observations": _series([32.0, 32.0, 32.0])}
    assert _check("dead_relu", many) is not None
    # Two windows together: one of them with most units alive decides against "dead".
    flicker = {
        "act_dead_fraction": _series([1.0, 0.2, 1.0]),
        "act_dead_observations": many["act_dead_observations"],
    }
    assert _check("dead_relu", flicker) is None


@pytest.mark.parametrize(
    "data",
    [{}, {"act_dead_fraction": _series([])}, {"act_dead_fraction": _series([np.nan, np.nan])}],
)
def test_dead_relu_quiet_on_empty_or_nan(data):
    assert _check("dead_relu", data) is None


# -- saturated_activations --------------------------------------------------------------------


def test_saturation_fires_above_half_with_rising_confidence():
    low = _check("saturated_activations", {"act_saturation": _series([0.6] * 8)})
    high = _check(
        "saturated_activations",
        {"act_saturation": _series([0.95] * 8), "act_saturation_layers": {"1": 0.95, "3": 0.2}},
    )
    _assert_well_formed(low, "saturated_activations")
    _assert_well_formed(high, "saturated_activations")
    assert 0.6 < low.confidence < high.confidence <= 0.9
    assert high.evidence["worst_layer"] == "1" and high.evidence["bound"] == 5.0


@pytest.mark.parametrize(("share", "fires"), [(0.3, False), (0.5, False), (0.51, True)])
def test_saturation_threshold_edge(share, fires):
    finding = _check("saturated_activations", {"act_saturation": _series([share] * 8)})
    assert (finding is not None) == fires


def test_saturation_uses_the_recent_median_and_ignores_nan():
    spike = _series([0.1] * 7 + [0.99])
    assert _check("saturated_activations", {"act_saturation": spike}) is None
    assert _check("saturated_activations", {"act_saturation": _series([np.nan] * 4)}) is None
    assert _check("saturated_activations", {}) is None


# -- poor_initialization ----------------------------------------------------------------------


def _scale(first, latest=None, signal=None, weights=None):
    layers = [str(i) for i in range(len(first))]
    scale = {
        "layers": layers,
        "latest": list(latest if latest is not None else first),
        "step": 480,
        "first_layers": layers,
        "first": list(first),
        "first_step": 0,
    }
    if signal is not None:
        scale["first_signal"] = list(signal)
        scale["first_weight_scale"] = list(weights if weights is not None else [1.0] * len(first))
    return {"act_scale": scale}


def test_poor_init_names_a_layer_that_loses_its_input_to_its_biases():
    # Tiny weights: the plain std stays at the biases' spread (no drift with depth), while the
    # sample-to-sample std drops 700x in the second layer.
    signal = [2.1e-3, 3.0e-6, 1.0e-6, 2.5e-11]
    tiny = [0.004] * 4  # every weight 250x below torch's default scale
    data = _scale([0.071, 0.081, 0.15, 0.07], signal=signal, weights=tiny)
    finding = _check("poor_initialization", data)
    _assert_well_formed(finding, "poor_initialization")
    assert finding.evidence["reading"] == "layer_drop" and finding.evidence["layer"] == "1"
    assert finding.evidence["drop"] == pytest.approx(2.1e-3 / 3.0e-6)
    assert finding.evidence["weight_scale"] == pytest.approx(0.004)
    # The same drop behind default-scale weights is dead units' doing (negative biases).
    default = _scale([0.071, 0.081, 0.15, 0.07], signal=signal, weights=[1.0] * 4)
    assert _check("poor_initialization", default) is None
    # A layer without a weight to read (recurrent: NaN) decides nothing.
    unknown = _scale([0.071, 0.081, 0.15, 0.07], signal=signal, weights=[0.004, np.nan, 1, 1])
    assert _check("poor_initialization", unknown) is None
    # A default-init sigmoid stack loses ~7x per layer: gradual, not one layer's weights.
    sigmoid = [0.52, 0.068, 0.0095, 0.0014, 0.5]
    flat = [0.5, 0.3, 0.3, 0.3, 0.3]
    assert _check("poor_initialization", _scale(flat, signal=sigmoid, weights=[0.05] * 5)) is None
    # The output layer is left out of the drops.
    out = _scale([0.5] * 3, signal=[0.5, 0.3, 1e-6], weights=[0.05] * 3)
    assert _check("poor_initialization", out) is None


def test_poor_init_fires_on_collapse_and_on_explosion_with_depth():
    collapse = _check("poor_initialization", _scale([0.1, 1e-3, 1e-5, 1e-6, 0.0]))
    _assert_well_formed(collapse, "poor_initialization")
    assert collapse.evidence["depth_ratio_at_start"] == pytest.approx(1e-5)
    assert collapse.confidence == pytest.approx(0.9)  # three decades past the bound
    assert "collapses" in collapse.summary
    explode = _check("poor_initialization", _scale([1.0, 30.0, 900.0, 1.0]))
    _assert_well_formed(explode, "poor_initialization")
    assert "explodes" in explode.summary and 0.6 < explode.confidence < 0.7


def test_poor_init_quiet_on_default_init_profiles_and_at_the_bound():
    # measured on PyTorch default-init MLP (depth 6) and CNN (4 convs) over digits
    default_mlp = [0.56, 0.24, 0.10, 0.075, 0.076, 0.07, 0.08]
    assert _check("poor_initialization", _scale(default_mlp)) is None
    assert _check("poor_initialization", _scale([0.58, 0.2, 0.08, 0.044, 0.022])) is None
    assert _check("poor_initialization", _scale([1.0, 0.1, 0.0101, 0.3])) is None
    assert _check("poor_initialization", _scale([1.0, 0.1, 0.0099, 0.3])) is not None


def test_poor_init_leaves_a_collapse_from_dead_units_to_dead_relu():
    data = {**_scale([0.5, 0.0, 0.0, 0.0]), "act_dead_fraction": _series([1.0, 1.0])}
    assert _check("poor_initialization", data) is None
    alive_at_start = {**_scale([0.5, 0.0, 0.0, 0.0]), "act_dead_fraction": _series([0.0, 1.0])}
    assert _check("poor_initialization", alive_at_start) is not None


@pytest.mark.parametrize(
    "first",
    [[], [1.0, 1e-6], [0.0, 1e-6, 1e-7], [np.nan, 1e-6, 1e-7], [1.0, np.inf, 1.0], ["x", 1, 2]],
)
def test_poor_init_quiet_on_short_zero_or_broken_profiles(first):
    assert _check("poor_initialization", _scale(first)) is None
    assert _check("poor_initialization", {"act_scale": "garbage"}) is None


# -- input_scale --------------------------------------------------------------------------------


def _inputs(rms, **extra):
    stats = {"mean": 0.0, "std": rms, "max_abs": 3 * rms, "feature_rms_max": rms}
    return {"input_stats": {**stats, "batch_size": 32, **extra}}


def test_input_scale_fires_on_unnormalized_features():
    finding = _check("input_scale", _inputs(65.0))
    _assert_well_formed(finding, "input_scale")
    assert finding.confidence == pytest.approx(0.6 + 0.3 * np.log10(6.5))
    assert finding.evidence["batch_size"] == 32 and finding.evidence["threshold"] == 10.0
    assert _check("input_scale", _inputs(630.0)).confidence == pytest.approx(0.9)


@pytest.mark.parametrize(("rms", "fires"), [(1.0, False), (10.0, False), (10.5, True)])
def test_input_scale_threshold_edge(rms, fires):
    assert (_check("input_scale", _inputs(rms)) is not None) == fires


@pytest.mark.parametrize(
    "data",
    [{}, {"input_stats": {}}, {"input_stats": None}, _inputs(float("nan")), _inputs(float("inf"))],
)
def test_input_scale_quiet_on_missing_or_nonfinite(data):
    assert _check("input_scale", data) is None


# -- vanishing_gradients and the symptom links ------------------------------------------------


def _layers(first, last):
    return {
        "grad_norm_per_tensor": np.array([[first, 1.0, 0.5, last, 0.1]] * 4),
        "param_names": ["0.weight", "0.bias", "2.weight", "4.weight", "4.bias"],
        "param_ndims": [2, 1, 2, 2, 1],
    }


def test_vanishing_quiet_on_an_exactly_zero_first_gradient():
    assert _check("vanishing_gradients", _layers(1e-8, 1.0)) is not None
    assert _check("vanishing_gradients", _layers(0.0, 1.0)) is None


@pytest.mark.parametrize("first_now", [0.0, 1e-12, 1e-9, 1e-6])
def test_vanishing_collapse_during_training_is_never_a_root_cause(first_now):
    """A first-layer gradient that was healthy at the start and collapsed (units died) ranks
    below any root found, whether the cut left exactly 0 or a float-noise remainder."""
    data = {**_layers(first_now, 1.0), "grad_norm_per_tensor_initial": [0.3, 1.0, 0.5, 0.2, 0.1]}
    finding = _check("vanishing_gradients", data)
    if finding is not None:
        assert finding.confidence < ROOT_CONFIDENCE
        assert finding.evidence["collapsed_during_training"] is True
        assert finding.evidence["ratio_at_start"] == pytest.approx(1.5)


def test_vanishing_from_the_start_keeps_its_confidence():
    data = {**_layers(1e-9, 1.0), "grad_norm_per_tensor_initial": [1e-9, 1.0, 0.5, 0.3, 0.1]}
    finding = _check("vanishing_gradients", data)
    assert finding is not None and finding.confidence >= 0.9
    assert "collapsed_during_training" not in finding.evidence


def test_evidence_keeps_the_first_per_tensor_gradient_row_for_good():
    from unstuck.diagnose.evidence import EvidenceBuilder
    from unstuck.signals.hub import Frame

    builder = EvidenceBuilder()
    builder.add_frame(Frame(step=49, signals={"grad_norm_per_tensor": np.array([[1.0, 2.0]] * 3)}))
    builder.add_frame(Frame(step=99, signals={"grad_norm_per_tensor": np.array([[0.0, 2.0]])}))
    assert builder.build(99)["grad_norm_per_tensor_initial"] == [1.0, 2.0]
    restored = EvidenceBuilder()
    restored.load_state_dict(builder.state_dict())
    assert restored.build(99)["grad_norm_per_tensor_initial"] == [1.0, 2.0]


def test_vanishing_ranks_below_the_activation_cause_that_explains_it():
    data = {**_layers(1e-9, 1.0), "act_saturation": _series([0.9] * 8)}
    findings = run_rules(Evidence(data, step=500))
    causes = [f.cause for f in findings]
    assert causes.index("saturated_activations") < causes.index("vanishing_gradients")
    vanishing = findings[causes.index("vanishing_gradients")]
    assert vanishing.evidence["explained_by"] == ["saturated_activations"]


def test_dead_relu_ranks_below_input_scale():
    data = {**_inputs(500.0), "act_dead_fraction": _series([0.1, 0.8])}
    findings = {f.cause: f for f in run_rules(Evidence(data, step=500))}
    assert findings["dead_relu"].confidence < 0.5 <= findings["input_scale"].confidence
