"""The log-level readings of lr_too_high, exploding_gradients, converged (lr_too_low: none).

Each rule falls back on the series a log holds (the training loss, the detector's state and
stats on it, ``lr/*``, a global ``grad_norm``) only when its main inputs (update ratios, the
gradient SNR, per-tensor norms) are absent; with them, the main reading decides as before.
Hand-built evidence: fires, stays quiet, and the main reading still wins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from unstuck.detect.detector import OSCILLATION_AUTOCORR, OSCILLATION_SIGMA
from unstuck.diagnose import Evidence, get_rule, run_rules
from unstuck.diagnose.base import ROOT_CONFIDENCE, Rule, _validate, inputs_present
from unstuck.diagnose.causes._logs import (
    LOG_MAX_CONFIDENCE,
    lr_never_changed,
    read_swings,
    structured_swings,
)
from unstuck.diagnose.causes.lr_too_high import FLIP_SHARE, FLIP_WINDOW, slope_sign_flips


def _series(values: Any, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=float)
    return np.arange(start, start + values.size), values


def _creep(n: int = 100, rate: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """A loss falling by ``rate`` (log units) per point: 6 % over 100 points."""
    return _series(10.0 * np.exp(-rate * np.arange(n)))


def _bounce(n: int = 100, low: float = 1.0, high: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    return _series(np.where(np.arange(n) % 2, high, low))


def _ev(**data: Any) -> Evidence:
    step = data.pop("step", 99)
    return Evidence(data, step=step)


SWINGS = {"spread": 2 * OSCILLATION_SIGMA, "autocorr": -0.9, "within_spread": 0.0}
CALM = {"spread": 0.01, "autocorr": 0.1, "within_spread": 0.0, "within_autocorr": 0.0}


# --------------------------------------------------------------------------- the interface


def test_requires_any_makes_the_log_reading_applicable() -> None:
    rule = get_rule("lr_too_low")  # no log reading: a loss and an LR are not enough
    assert not rule.applicable(
        _ev(loss=_creep(), detector_state="slow", **{"lr/0": _series([1e-5])})
    )
    assert rule.applicable(_ev(update_ratio=_series([1e-3] * 8), grad_norm=_series([1.0])))
    assert get_rule("exploding_gradients").applicable(_ev(grad_norm=_series([1.0])))
    assert get_rule("converged").applicable(_ev(loss=_creep(), detector_state="plateau"))
    assert not get_rule("converged").applicable(_ev(loss=_creep()))


def test_inputs_present_prefix_names() -> None:
    ev = _ev(loss=_creep(), **{"lr/Adam/pg1": _series([1e-3])})
    assert inputs_present(ev, frozenset({"lr/*", "loss"}))
    assert not inputs_present(ev, frozenset({"grad_norm/*"}))
    assert inputs_present(ev, frozenset())


def test_requires_any_must_be_a_tuple_of_frozensets() -> None:
    class Broken(Rule):
        """A rule with a list where a tuple of frozensets belongs."""

        code = "broken"
        explanation = "x"
        requires_any = [frozenset({"loss"})]  # type: ignore[assignment]  # noqa: RUF012

    with pytest.raises(ImportError, match="requires_any"):
        _validate(Broken, "broken")


def test_log_readings_stay_below_the_act_bar() -> None:
    assert LOG_MAX_CONFIDENCE < ROOT_CONFIDENCE


# --------------------------------------------------------------------------- lr_too_high


def test_slope_sign_flips_is_thedeepcheckers_reading() -> None:
    assert slope_sign_flips(_bounce(FLIP_WINDOW)[1]) == 1.0
    assert slope_sign_flips(_creep(FLIP_WINDOW)[1]) == 0.0
    assert slope_sign_flips(_bounce(FLIP_WINDOW - 1)[1]) is None  # shorter than the window
    # independent noise flips about 2/3 of its slopes: why the share only confirms a state
    noise = np.random.default_rng(0).normal(size=5000)
    assert slope_sign_flips(noise, 5000) == pytest.approx(2 / 3, abs=0.02)


def _climb(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Minibatch noise on a loss that climbs from 1.0 to 1.6 over the window."""
    rng = np.random.default_rng(seed)
    return _series(np.linspace(1.0, 1.6, n) + 0.05 * rng.standard_normal(n))


def _noise(n: int = 200, seed: int = 0, tail: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed per-step minibatch noise around a flat level: no LR to blame."""
    rng = np.random.default_rng(seed)
    return _series(1.0 + 0.2 * rng.standard_t(tail, n))


@pytest.mark.parametrize(
    ("state", "loss", "base"),
    [("oscillating", _bounce(), 0.35), ("diverging", _climb(), 0.4)],
    ids=["bounce", "climb"],
)
def test_lr_too_high_from_the_detector_state(state: str, loss: Any, base: float) -> None:
    ev = _ev(loss=loss, detector_state=state, detector_series="train")
    finding = get_rule("lr_too_high").check(ev)
    assert finding is not None and base <= finding.confidence <= LOG_MAX_CONFIDENCE
    assert finding.evidence["source"] == "log" and math.isnan(finding.evidence["lr"])
    assert finding.remedies[0].action == "lr_scale"
    assert "at LR" not in finding.summary  # no LR in this log


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("state", ["oscillating", "diverging"])
def test_lr_too_high_silent_on_minibatch_noise_and_smooth_descents(state: str, seed: int) -> None:
    """The detector's call alone is not enough on a log: per-step noise (heavy tails included)
    and a smooth creep show no climb and no bounce, so the log cannot blame the LR."""
    for loss in (_noise(seed=seed), _noise(seed=seed, tail=1.5), _creep(120)):
        ev = _ev(loss=loss, detector_state=state, detector_series="train", detector_stats=SWINGS)
        assert get_rule("lr_too_high").check(ev) is None


def test_lr_too_high_silent_on_a_loss_rounded_to_four_decimals() -> None:
    """HF logs round(loss, 4): a converged loss of 2e-4 flips between 0.0002 and 0.0003."""
    rng = np.random.default_rng(0)
    rounded = np.round(2.5e-4 + 6e-5 * rng.standard_normal(200), 4)
    ev = _ev(loss=_series(rounded), detector_state="plateau", detector_series="train")
    assert get_rule("lr_too_high").check(_ev(**{**ev, "detector_stats": SWINGS})) is None
    reading = read_swings(rounded)
    assert reading is not None and reading.rounding and reading.resolution == pytest.approx(1e-4)


def test_lr_too_high_flips_confirm_and_the_lr_is_named() -> None:
    ev = _ev(
        loss=_bounce(),
        detector_state="diverging",
        detector_series="train",
        **{"lr/0": _series([0.5] * 100)},
    )
    finding = get_rule("lr_too_high").check(ev)
    assert finding is not None
    assert finding.evidence["slope_sign_flips"] == 1.0 > FLIP_SHARE
    assert finding.confidence == pytest.approx(LOG_MAX_CONFIDENCE)  # 0.4 + 0.05, capped
    assert "at LR 0.5 (lr/0)" in finding.summary and finding.evidence["lr"] == 0.5
    assert "100% of its slopes flip sign" in finding.summary


def test_lr_too_high_reads_swings_on_an_open_plateau() -> None:
    plateau = {"loss": _bounce(), "detector_state": "plateau", "detector_series": "train"}
    assert structured_swings(SWINGS) and not structured_swings(CALM)
    within = {"spread": 0.0, "within_spread": 0.3, "within_autocorr": -OSCILLATION_AUTOCORR * 2}
    assert structured_swings(within)
    finding = get_rule("lr_too_high").check(_ev(**plateau, detector_stats=SWINGS))
    assert finding is not None and "bounces on a plateau" in finding.summary
    assert finding.confidence == pytest.approx(0.4)  # oscillating's 0.35 + the flips
    assert get_rule("lr_too_high").check(_ev(**plateau, detector_stats=CALM)) is None


@pytest.mark.parametrize(
    ("state", "series"),
    [("improving", "train"), ("slow", "train"), ("plateau", "train"), ("diverging", "val")],
)
def test_lr_too_high_quiet_without_the_shape(state: str, series: str) -> None:
    # a bouncing loss is not enough on its own: noise flips 2/3 of the slopes too
    ev = _ev(loss=_bounce(), detector_state=state, detector_series=series, detector_stats=CALM)
    assert get_rule("lr_too_high").check(ev) is None


def test_lr_too_high_main_reading_wins_with_update_ratios() -> None:
    data = {"loss": _bounce(), "detector_state": "oscillating", "detector_series": "train"}
    rich = get_rule("lr_too_high").check(_ev(**data, update_ratio=_series([1e-3] * 8)))
    assert rich is not None and rich.confidence == 0.5 and "source" not in rich.evidence
    ratio = get_rule("lr_too_high").check(_ev(**data, update_ratio=_series([0.5] * 8)))
    assert ratio is not None and ratio.confidence > 0.6 and "above 0.1" in ratio.summary
    calm = {**data, "detector_state": "plateau", "detector_stats": SWINGS}
    assert get_rule("lr_too_high").check(_ev(**calm, update_ratio=_series([1e-3] * 8))) is None


# --------------------------------------------------------------------------- lr_too_low


def _low(state: str = "slow", lr: Any = 1e-5, **extra: Any) -> Evidence:
    data: dict[str, Any] = {
        "loss": _creep(),
        "detector_state": state,
        "detector_series": "train",
        "detector_stats": {"recent_decrease": 0.2, "recent_decrease_low": 0.1, **CALM},
    }
    if lr is not None:
        data["lr/0"] = _series(np.broadcast_to(np.asarray(lr, dtype=float), (100,)))
    data.update(extra)
    return _ev(**data)


@pytest.mark.parametrize(
    "ev",
    [
        _low(),  # a creep from the start at a constant LR: as much a run stopped early
        _low(grad_norm=_series([0.5] * 32)),  # healthy logged gradients do not size a step
        _low("plateau"),  # stalled early: as much a flat region, dead units or a broken loss
        _low("plateau", lr=0.0),
    ],
)
def test_lr_too_low_has_no_log_reading(ev: Evidence) -> None:
    """A log at one LR cannot tell a too-small LR from a short run (the loss follows LR ×
    steps while steps are small) or from a stall of another cause: no hint is named."""
    assert get_rule("lr_too_low").check(ev) is None


def test_lr_never_changed() -> None:
    assert lr_never_changed(_low())
    assert not lr_never_changed(_low(lr=None))
    assert not lr_never_changed(_low(lr=np.r_[np.full(50, 0.1), np.zeros(50)]))


def test_lr_too_low_main_reading_wins_with_update_ratios() -> None:
    # healthy steps measured: the creeping loss at a constant LR is no small LR
    ev = _low(update_ratio=_series([1e-3] * 8), grad_norm=_series([0.5] * 32))
    assert get_rule("lr_too_low").check(ev) is None
    tiny = get_rule("lr_too_low").check(
        _low(update_ratio=_series([2e-6] * 8), grad_norm=_series([0.5] * 32))
    )
    assert tiny is not None and tiny.confidence > 0.8 and tiny.remedies[0].action == "lr_scale"
    assert "source" not in tiny.evidence
    # the main reading half there (ratios without a gradient norm) does not fall back
    assert get_rule("lr_too_low").check(_low(update_ratio=_series([1e-3] * 8))) is None


# --------------------------------------------------------------------------- exploding


def _norms(values: Any, **extra: Any) -> Evidence:
    return _ev(
        grad_norm=_series(values), detector_state="diverging", detector_series="train", **extra
    )


def test_exploding_from_a_spike_over_the_running_median() -> None:
    values = [1.0] * 40 + [100.0]
    finding = get_rule("exploding_gradients").check(_norms(values))
    assert finding is not None and finding.evidence["spike_ratio"] == pytest.approx(100.0)
    assert finding.confidence == pytest.approx(0.6 + 0.2 * math.log10(100 / 70), abs=1e-4)
    assert finding.evidence["event_step"] == 40 and "100 × its running median" in finding.summary
    assert get_rule("exploding_gradients").check(_norms([1.0] * 40 + [50.0])) is None
    # too few norms before the jump for a running median
    assert get_rule("exploding_gradients").check(_norms([1.0] * 5 + [1000.0])) is None


def test_exploding_from_growth_over_five_checks() -> None:
    growing = [1.0] * 40 + [2.5**k for k in range(1, 5)]  # ×2.5 check to check over 5 checks
    finding = get_rule("exploding_gradients").check(_norms(growing))
    assert finding is not None and finding.evidence["growth"] == pytest.approx(2.5**4)
    assert "over 5 consecutive logged checks" in finding.summary
    assert finding.confidence == pytest.approx(0.6 + 0.2 * math.log10(2.5**4 / 16), abs=1e-4)
    slower = [1.0] * 40 + [1.9**k for k in range(1, 5)]
    assert get_rule("exploding_gradients").check(_norms(slower)) is None
    shorter = [1.0] * 40 + [3.0**k for k in range(1, 4)]  # only 4 checks
    assert get_rule("exploding_gradients").check(_norms(shorter)) is None


def test_exploding_from_nonfinite_norms_in_a_row() -> None:
    finding = get_rule("exploding_gradients").check(_norms([1.0] * 20 + [np.inf] * 3))
    assert finding is not None and finding.confidence == 0.6
    assert finding.evidence["nonfinite_norms_in_a_row"] == 3
    # an isolated inf (a mixed-precision scaler skipping a step) is not an explosion
    isolated = [1.0] * 20 + [np.inf, 1.0, np.nan, 1.0, np.inf, 1.0]
    assert get_rule("exploding_gradients").check(_norms(isolated)) is None


def test_exploding_quiet_on_a_steady_norm_or_a_validation_decision() -> None:
    rng = np.random.default_rng(0)
    steady = np.exp(rng.normal(0.0, 0.5, 200))  # a noisy but steady norm
    assert get_rule("exploding_gradients").check(_norms(steady)) is None
    spike = [1.0] * 40 + [1000.0]
    ev = _ev(grad_norm=_series(spike), detector_state="diverging", detector_series="val")
    assert get_rule("exploding_gradients").check(ev) is None


def test_exploding_main_reading_wins_with_per_tensor_norms() -> None:
    layers = {
        "grad_norm_per_tensor": np.array([[50.0, 1.0]] * 4),  # ratio 50 < 70: not exploding
        "param_names": ["0.weight", "1.weight"],
        "param_ndims": [2, 2],
    }
    assert get_rule("exploding_gradients").check(_norms([1.0] * 40 + [1e4], **layers)) is None
    layers["grad_norm_per_tensor"] = np.array([[100.0, 1.0]] * 4)
    rich = get_rule("exploding_gradients").check(_norms([1.0] * 41, **layers))
    assert rich is not None and rich.evidence["ratio"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- converged


def _flat(fell: float = 2.5, state: str = "plateau", **extra: Any) -> Evidence:
    loss = np.r_[np.full(8, 10.0), np.full(92, 10.0 * math.exp(-fell))]
    data: dict[str, Any] = {
        "loss": _series(loss),
        "detector_state": state,
        "detector_series": "train",
        **extra,
    }
    return _ev(**data)


def test_converged_from_the_loss_alone() -> None:
    finding = get_rule("converged").check(_flat())
    assert finding is not None and finding.confidence == pytest.approx(0.3)
    assert "cannot be told from a noise floor" in finding.summary
    assert finding.evidence["source"] == "log" and math.isnan(finding.evidence["grad_snr"])
    assert not any(r.automatic for r in finding.remedies)
    with_val = get_rule("converged").check(_flat(val_loss=_series([0.9, 0.85, 0.86, 0.85, 0.85])))
    assert with_val is not None and with_val.confidence == pytest.approx(0.35)
    assert with_val.confidence <= LOG_MAX_CONFIDENCE


@pytest.mark.parametrize(
    "ev",
    [
        _flat(fell=1.0),  # fell less than an order of magnitude: capacity_limit's
        _flat(state="slow"),  # "slow" only counts with an SNR below 1
        _flat(state="oscillating"),
        _flat(detector_series="val"),
        _flat(val_loss=_series([0.5, 0.5, 0.6, 0.7, 0.8])),  # validation rising
        _flat(**{"lr/0": _series([0.1] * 50 + [0.0] * 50)}),  # LR 0: flat by construction
        # a linear decay to 0 ending at 1 % of its peak: the schedule ran out, flat by design
        _flat(**{"lr/0": _series(np.linspace(1e-3, 1e-5, 100))}),
        # a step schedule cut to a tenth: at the tenth, flat says nothing either
        _flat(**{"lr/0": _series([0.1] * 50 + [0.01] * 50)}),
    ],
)
def test_converged_from_the_loss_quiet(ev: Evidence) -> None:
    assert get_rule("converged").check(ev) is None


def test_converged_from_the_loss_under_a_schedule_still_above_a_tenth() -> None:
    """Decayed, but not to a tenth of its peak (a cosine half-way): the steps are big enough
    that a flat loss still reads as converged."""
    finding = get_rule("converged").check(_flat(**{"lr/0": _series(np.linspace(1e-3, 2e-4, 100))}))
    assert finding is not None and finding.evidence["source"] == "log"


def test_converged_main_reading_wins_with_the_gradient_snr() -> None:
    above_noise = _flat(grad_snr=_series([3.0, 2.5, 4.0]))
    assert get_rule("converged").check(above_noise) is None
    below = get_rule("converged").check(_flat(grad_snr=_series([0.2, 0.3, 0.1])))
    assert below is not None and below.confidence == pytest.approx(0.35)
    assert "source" not in below.evidence and "below its noise" in below.summary


# --------------------------------------------------------------------------- together


def test_a_live_like_evidence_gets_no_log_reading() -> None:
    """With every main input present (a Guard run), no finding comes from a log reading."""
    ev = _ev(
        loss=_bounce(),
        detector_state="oscillating",
        detector_series="train",
        detector_stats=SWINGS,
        update_ratio=_series([1e-3] * 8),
        grad_norm=_series([1.0] * 40 + [1e4]),
        grad_norm_per_tensor=np.array([[1.0, 1.0]] * 4),
        param_names=["0.weight", "1.weight"],
        param_ndims=[2, 2],
        grad_snr=_series([3.0] * 3),
        **{"lr/0": _series([0.1] * 100)},
    )
    findings = run_rules(ev)
    assert findings and all("source" not in f.evidence for f in findings)
    assert {f.cause for f in findings} == {"lr_too_high"}
