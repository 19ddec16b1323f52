"""output_activation: the output tap on real forwards, the rule on hand-built evidence (each
reading fires, healthy evidence and an unhurt loss stay silent), and whole Guard runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional

import unstuck
from unstuck.diagnose import Evidence, get_rule, run_rules
from unstuck.diagnose.causes.output_activation import probability_band
from unstuck.signals.base import StepContext
from unstuck.signals.outputs import OutputTap, last_op

# -- the rule on hand-built evidence ----------------------------------------------------------


def _loss(values):
    values = np.asarray(values, dtype=float)
    return (np.arange(values.size), values)


STALLED = {"loss": _loss([2.30] * 80), "loss_initial": 2.31, "detector_state": "plateau"}
FALLING = {"loss": _loss(np.linspace(2.3, 0.2, 80)), "loss_initial": 2.3, "detector_state": "slow"}


def _out(units, lo, hi, *, rows=True, constant=False, op=""):
    return {
        "units": units,
        "min": lo,
        "max": hi,
        "row_sum_error": 1e-7 if rows else 3.0,
        "probability_rows": rows,
        "constant": constant,
        "last_op": op,
        "step": 128,
    }


def _check(data):
    return get_rule("output_activation").check(Evidence(data, step=500))


def test_softmax_output_under_a_stalled_loss_is_named_with_its_reading():
    finding = _check({**STALLED, "output_stats": _out(10, 0.0, 1.0, op="Softmax")})
    assert finding is not None and finding.evidence["reading"] == "softmax"
    assert finding.evidence["loss_hurt"] == "stalled"
    assert finding.confidence > 0.5
    assert "F.cross_entropy" in finding.remedies[0].note
    without_op = _check({**STALLED, "output_stats": _out(10, 0.0, 1.0)})
    assert without_op is not None and without_op.confidence < finding.confidence


def test_softmax_output_is_silent_while_the_loss_falls():
    # a softmax output with a hand-written NLL of its log trains: no hurt, no finding
    assert _check({**FALLING, "output_stats": _out(10, 0.0, 1.0, op="Softmax")}) is None


def test_a_loss_stalled_inside_the_probability_band_counts_even_after_falling():
    low, high = probability_band(10)
    assert low == pytest.approx(math.log(math.e + 9) - 1) and high - low == pytest.approx(1.0)
    fell = {"loss": _loss([low + 0.05] * 80), "loss_initial": 2.3, "detector_state": "plateau"}
    finding = _check({**fell, "output_stats": _out(10, 0.0, 1.0, op="Softmax")})
    assert finding is not None and "band" in finding.evidence["loss_hurt"]
    below = {**fell, "loss": _loss([low - 0.3] * 80)}  # an NLL below the band: not CE on probs
    assert _check({**below, "output_stats": _out(10, 0.0, 1.0, op="Softmax")}) is None
    # A crawl inside the band counts too (plateau or slow there depends on minibatch noise);
    # a loss the detector sees improving does not.
    slow = {**fell, "detector_state": "slow"}
    assert _check({**slow, "output_stats": _out(10, 0.0, 1.0, op="Softmax")}) is not None
    improving = {**fell, "detector_state": "improving"}
    assert _check({**improving, "output_stats": _out(10, 0.0, 1.0, op="Softmax")}) is None


def test_multi_label_targets_under_a_softmax_are_said():
    targets = {"min": 0.0, "max": 1.0, "units": 10, "row_sum_max": 3.0, "source": "batch"}
    finding = _check({**STALLED, "output_stats": _out(10, 0, 1), "target_stats": targets})
    assert finding is not None and finding.evidence["multi_label_targets"]
    assert "BCEWithLogitsLoss" in finding.remedies[0].note


def test_logits_are_silent_even_when_stalled():
    assert _check({**STALLED, "output_stats": _out(10, -4.0, 7.0, rows=False)}) is None


def test_one_unit_softmax_is_named():
    finding = _check({**STALLED, "output_stats": _out(1, 1.0, 1.0, constant=True, op="Softmax")})
    assert finding is not None and finding.evidence["reading"] == "one_unit_softmax"
    # a constant one-unit output that is no softmax (all units dead: a bias) is not this cause
    dead = _out(1, 0.3, 0.3, rows=False, constant=True, op="Addmm")
    assert _check({**STALLED, "output_stats": dead}) is None


def _regression(t_lo, t_hi):
    return {"min": t_lo, "max": t_hi, "units": 1, "row_sum_max": t_hi, "source": "batch"}


def test_sigmoid_output_on_far_targets_is_named_without_the_hurt_gate():
    data = {**FALLING, "output_stats": _out(1, 0.2, 0.9999, rows=False, op="Sigmoid")}
    finding = _check({**data, "target_stats": _regression(3.0, 103.0)})
    assert finding is not None and finding.evidence["reading"] == "bounded_output"
    assert finding.evidence["bound"] == [0.0, 1.0] and finding.evidence["target_excess"] > 100
    assert "sigmoid" in finding.remedies[0].note
    tanh = {**data, "output_stats": _out(1, -0.9, 0.99, rows=False, op="Tanh")}
    assert _check({**tanh, "target_stats": _regression(-1.0, 2.5)}) is None  # 0.75 widths out
    assert _check({**tanh, "target_stats": _regression(-1.0, 3.5)}) is not None


def test_a_small_linear_output_is_not_read_as_bounded_unless_it_presses_on_the_bound():
    small = {**STALLED, "output_stats": _out(1, -0.5, 0.8, rows=False, op="Addmm")}
    assert _check({**small, "target_stats": _regression(-2.0, 30.0)}) is None
    pinned = {**STALLED, "output_stats": _out(1, 0.1, 0.9995, rows=False, op="")}
    assert _check({**pinned, "target_stats": _regression(-2.0, 30.0)}) is not None


def test_targets_within_the_sigmoid_range_are_silent():
    data = {**STALLED, "output_stats": _out(1, 0.01, 0.99, rows=False, op="Sigmoid")}
    assert _check({**data, "target_stats": _regression(0.0, 1.0)}) is None


def test_partial_or_non_finite_evidence_returns_none():
    assert _check({}) is None
    assert _check({**STALLED, "output_stats": _out(10, math.nan, 1.0)}) is None
    assert _check({**STALLED, "output_stats": {"units": "ten"}}) is None


def test_it_ranks_before_the_symptoms_it_explains():
    data = {
        **STALLED,
        "output_stats": _out(10, 0.0, 1.0, op="Softmax"),
        "act_saturation": _loss([0.9] * 8),
    }
    findings = run_rules(Evidence(data, step=500))
    assert findings and findings[0].cause == "output_activation"
    by_cause = {f.cause: f for f in findings}
    assert by_cause["saturated_activations"].confidence < 0.5  # explained


# -- the tap ------------------------------------------------------------------------------------


class _Wrapped(torch.nn.Module):
    """A functional softmax in a wrapper's forward: no nn.Softmax module to hook."""

    def __init__(self, act):
        super().__init__()
        self.inner = torch.nn.Linear(4, 3)
        self.act = act

    def forward(self, x):
        return self.act(self.inner(x))


def _tap_on(model, every=2):
    tap = OutputTap(every)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tap.bind(
        StepContext(
            params=list(model.parameters()), names=[], group_index=[], optimizer=opt, model=model
        )
    )
    return tap


def test_the_tap_reads_a_functional_softmax_only_on_sampled_forwards():
    model = _Wrapped(lambda z: torch.softmax(z, -1))
    tap = _tap_on(model)
    for step in range(5):
        model(torch.randn(8, 4))
        tap.on_loss(step, torch.zeros(()), None, None)
    with torch.no_grad():  # validation forwards are not samples
        model(torch.randn(8, 4))
    signals = tap.finish(_host(tap.collect()))
    stats = signals["output_stats"]
    assert stats["units"] == 3 and stats["probability_rows"] and stats["last_op"] == "Softmax"
    assert stats["step"] == 4 and 0.0 <= stats["min"] <= stats["max"] <= 1.0
    assert not stats["constant"]


def _host(packet):
    host = dict(packet.host)
    host.update({k: v.reshape(-1).tolist() for k, v in packet.tensors.items()})
    return host


def test_the_tap_reads_float_targets_from_the_batch_and_skips_class_labels():
    model = _Wrapped(torch.sigmoid)
    tap = _tap_on(model)
    model(torch.randn(8, 4))
    y = torch.linspace(3.0, 103.0, 24).reshape(8, 3)
    tap.record_batch(0, (torch.randn(8, 4), y))
    tap.on_loss(0, torch.zeros(()), None, None)
    signals = tap.finish(_host(tap.collect()))
    assert signals["output_stats"]["last_op"] == "Sigmoid"
    assert not signals["output_stats"]["probability_rows"]
    targets = signals["target_stats"]
    assert targets["min"] == pytest.approx(3.0) and targets["max"] == pytest.approx(103.0)
    assert targets["units"] == 3 and targets["source"] == "batch"
    model(torch.randn(8, 4))  # step 1 is not sampled (every=2): its batch is not read
    tap.record_batch(1, (torch.randn(8, 4), y))
    tap.on_loss(1, torch.zeros(()), None, None)
    model(torch.randn(8, 4))
    tap.on_loss(2, torch.zeros(()), None, torch.randint(0, 3, (8,)))  # labels: not recorded
    signals = tap.finish(_host(tap.collect()))
    assert "target_stats" not in signals and signals["output_stats"]["step"] == 2


def test_one_unit_softmax_output_is_constant_and_last_op_skips_views():
    model = _Wrapped(lambda z: torch.softmax(z[:, :1], -1).reshape(-1, 1).float())
    tap = _tap_on(model)
    model(torch.randn(8, 4))
    tap.on_loss(0, torch.zeros(()), None, None)
    stats = tap.finish(_host(tap.collect()))["output_stats"]
    assert stats["units"] == 1 and stats["constant"] and stats["probability_rows"]
    assert stats["last_op"] == "Softmax"
    assert last_op(torch.ones(3)) == ""


def test_the_tap_refuses_a_bad_cadence():
    with pytest.raises(ValueError, match="positive int"):
        OutputTap(0)


# -- whole runs ---------------------------------------------------------------------------------


def _run(softmax: bool, gain: float = 1000.0, steps: int = 400):
    """A 10-class MLP on separable data; ``softmax`` appends one before F.cross_entropy (head
    weights × ``gain``: the softmax saturates and the loss stalls)."""
    torch.manual_seed(0)
    x = torch.randn(1024, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    inner = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    if softmax:
        with torch.no_grad():
            inner[2].weight.mul_(gain)
    model = _Wrapped.__new__(_Wrapped)
    torch.nn.Module.__init__(model)
    model.inner = inner
    model.act = (lambda z: torch.softmax(z, -1)) if softmax else (lambda z: z)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = unstuck.Guard(model, opt, policy="observe", console=False, activation_every=16)
    for _ in range(steps):
        idx = torch.randint(0, 1024, (32,))
        loss = functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss.detach(), batch=(x[idx], y[idx]))
    guard.close()
    return guard.findings


def test_a_softmax_fed_to_cross_entropy_stalls_and_is_named_first():
    findings = _run(softmax=True)
    assert findings
    top = max(findings, key=lambda f: f.confidence)
    assert top.cause == "output_activation" and top.evidence["reading"] == "softmax"


def test_a_healthy_logits_model_gets_no_output_activation_finding():
    findings = _run(softmax=False)
    assert not [f for f in findings if f.cause == "output_activation"]
