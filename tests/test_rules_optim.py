"""The optimizer-and-gradient rules on hand-built evidence: fire, stay quiet, edges, NaN."""

from __future__ import annotations

import numpy as np
import pytest

from unstuck.diagnose import Evidence, get_rule, run_rules

OPTIM_RULES = [
    "stale_optimizer_state",
    "precision_underflow",
    "over_clipping",
    "over_regularization",
    "batch_size",
]


def _s(values, start=0, stride=8):
    values = np.asarray(values, dtype=float)
    return (np.arange(start, start + stride * values.size, stride), values)


@pytest.mark.parametrize("code", OPTIM_RULES)
def test_empty_and_nan_evidence_give_none(code):
    rule = get_rule(code)
    assert rule.check(Evidence({})) is None
    nan = {
        "optimizer_type": "Adam",
        "second_moment_sum": _s([np.nan] * 4),
        "grad_norm": _s([np.nan] * 32),
        "param_dtypes": {"float16": 1.0},
        "zero_grad_fraction": _s([np.nan] * 8),
        "clip_rate": _s([np.nan] * 8),
        "weight_norm": _s([np.nan] * 4),
        "weight_decay": [np.nan],
        "grad_snr": _s([np.nan] * 8),
        "update_ratio": _s([np.nan] * 8),
    }
    assert rule.check(Evidence(nan, step=100)) is None


# -- stale_optimizer_state ----------------------------------------------------------------------


def _stale(v_hat, grad=0.1):
    return Evidence(
        {
            "optimizer_type": "Adam",
            "second_moment_sum": _s([v_hat] * 3, start=32, stride=32),
            "second_moment_beta": 0.999,
            "grad_norm": _s([grad] * 16),
        },
        step=128,
    )


def test_stale_fires_when_second_moment_dwarfs_recent_gradients():
    f = get_rule("stale_optimizer_state").check(_stale(v_hat=1000 * 0.01))
    assert f is not None and f.cause == "stale_optimizer_state"
    assert f.evidence["ratio"] == pytest.approx(1000.0)
    assert 0.7 < f.confidence < 0.8  # 0.6 + 0.15 · one decade above 100
    # Resetting the state is reversible (the engine snapshots first), so it is automatic.
    assert [r.action for r in f.remedies if r.automatic] == ["reset_optimizer_state"]


@pytest.mark.parametrize(("ratio", "fires"), [(99.0, False), (100.5, True), (20.0, False)])
def test_stale_threshold_edge(ratio, fires):
    f = get_rule("stale_optimizer_state").check(_stale(v_hat=ratio * 0.01))
    assert (f is not None) == fires
    if f is not None:
        assert f.confidence == pytest.approx(0.6, abs=1e-3)


def test_stale_reference_is_what_the_runs_own_gradients_put_in_v_hat():
    # A short Adam run: large gradients in its first steps, small ones since. Its v̂ (a
    # bias-corrected β₂-weighted mean of ‖g‖²) still holds the large ones; that is not stale.
    rule = get_rule("stale_optimizer_state")
    steps = np.arange(0, 8 * 40, 8)
    norms = np.where(steps < 40, 10.0, 0.1)
    w = 0.999 ** (steps[-1] - steps).astype(float)
    own = float(np.sum(w * norms**2) / np.sum(w))  # what the run's own gradients put there
    data = {
        "optimizer_type": "Adam",
        "second_moment_beta": 0.999,
        "grad_norm": (steps, norms),
        "second_moment_sum": _s([own], start=int(steps[-1])),
    }
    assert rule.check(Evidence(data, step=int(steps[-1]))) is None
    # The median of the recent squared gradients (0.01) would have called it ~1,000× stale.
    assert own / 0.01 > 100
    # State loaded from a run whose loss was 100× larger holds 10⁴× the squared gradients.
    data["second_moment_sum"] = _s([own * 1e4], start=int(steps[-1]))
    f = rule.check(Evidence(data, step=int(steps[-1])))
    assert f is not None and f.evidence["grad_sq_reference"] == pytest.approx(own)
    assert f.evidence["ratio"] == pytest.approx(1e4)


def test_stale_reports_empty_state_and_lagging_step_count():
    rule = get_rule("stale_optimizer_state")
    empty = Evidence({"optimizer_type": "Adam", "optimizer_state_empty": _s([0.0, 1.0])}, step=64)
    f = rule.check(empty)
    assert f is not None and f.confidence == pytest.approx(0.7)
    lag = Evidence(
        {
            "optimizer_type": "Adam",
            "optimizer_state_empty": _s([0.0]),
            "optimizer_state_step": _s([32.0]),
            "optimizer_step_lag": _s([1000.0]),
        },
        step=1032,
    )
    f = rule.check(lag)
    assert f is not None and "32 steps" in f.summary
    fine = Evidence({**dict(lag), "optimizer_step_lag": _s([0.0])}, step=32)
    assert rule.check(fine) is None


# -- precision_underflow --------------------------------------------------------------------------


def test_precision_needs_low_precision():
    fp32 = Evidence({"param_dtypes": {"float32": 1.0}, "zero_grad_fraction": _s([0.9] * 8)})
    assert get_rule("precision_underflow").check(fp32) is None
    fp16 = Evidence({"param_dtypes": {"float16": 1.0}, "zero_grad_fraction": _s([0.9] * 8)})
    f = get_rule("precision_underflow").check(fp16)
    assert f is not None and f.confidence == pytest.approx(0.6 + 0.3 * 0.8)


@pytest.mark.parametrize(("share", "fires"), [(0.49, False), (0.5, True), (0.1, False)])
def test_precision_zero_share_edge(share, fires):
    ev = Evidence(
        {
            "param_dtypes": {"float16": 1.0},
            "zero_grad_fraction": _s([share / 2] * 8),
            "subnormal_grad_fraction": _s([share / 2] * 8),
        }
    )
    assert (get_rule("precision_underflow").check(ev) is not None) == fires


def test_precision_scaler_collapse_and_skips():
    base = {"param_dtypes": {"float32": 1.0}, "grad_scaler": True, "output_dtype": "float16"}
    healthy = Evidence({**base, "loss_scale": _s([65536.0]), "skipped_step_share": _s([0.0] * 4)})
    assert get_rule("precision_underflow").check(healthy) is None
    collapsed = Evidence({**base, "loss_scale": _s([2.0**-20]), "skipped_step_share": _s([1.0])})
    f = get_rule("precision_underflow").check(collapsed)
    assert f is not None and f.confidence > 0.9
    assert "skipped" in f.summary and "loss scale" in f.summary


def test_precision_unchanged_weights():
    ev = Evidence({"param_dtypes": {"float16": 1.0}, "unchanged_weight_fraction": _s([0.75] * 8)})
    f = get_rule("precision_underflow").check(ev)
    assert f is not None and f.evidence["unchanged_weight_share"] == pytest.approx(0.75)


# -- over_clipping --------------------------------------------------------------------------------


def _clip(rate, pre=1.0, limit=0.01, opt="SGD"):
    return Evidence(
        {
            "grad_norm": _s([limit] * 32),
            "clip_rate": _s([rate] * 8),
            "clip_pre_norm": _s([pre] * 8),
            "clip_threshold": _s([limit] * 8),
            "optimizer_type": opt,
        }
    )


def test_over_clipping_fires_above_ninety_percent():
    f = get_rule("over_clipping").check(_clip(1.0))
    assert f is not None and f.confidence == pytest.approx(0.95)
    remedies = {r.action: r for r in f.remedies}
    assert remedies["raise_clip_norm"].params["max_norm"] == pytest.approx(1.0)
    adjust = remedies["clip_adjust"]  # automatic: applied when the loop clips through the guard
    assert adjust.automatic
    expected = min(max(f.evidence["pre_over_max"], 2.0), 100.0)
    assert adjust.params["factor"] == pytest.approx(expected)
    assert get_rule("over_clipping").check(_clip(0.9)) is None
    assert get_rule("over_clipping").check(_clip(0.5)) is None


def test_over_clipping_capped_for_adam():
    f = get_rule("over_clipping").check(_clip(1.0, opt="Adam"))
    assert f is not None and f.confidence < 0.5


def test_over_clipping_from_pinned_grad_norms_without_the_helper():
    rule = get_rule("over_clipping")
    pinned = Evidence({"grad_norm": _s([0.25 * (1 - 1e-7)] * 30 + [0.1, 0.2])})
    f = rule.check(pinned)
    assert f is not None and f.evidence["source"] == "pinned gradient norms"
    rng = np.random.default_rng(0)
    free = Evidence({"grad_norm": _s(rng.uniform(0.1, 1.0, 32))})
    assert rule.check(free) is None


# -- over_regularization -------------------------------------------------------------------------


def _reg(decay, norm_now, norm_start=10.0, grad=0.5, snr=1.0, decoupled=False, ratio=1e-3):
    return Evidence(
        {
            "weight_decay": [decay],
            "weight_norm_per_group": [norm_now],
            "weight_norm": _s([norm_start * 0.95, norm_now], stride=50),
            "weight_norm_initial": norm_start,
            "grad_norm": _s([grad] * 32),
            "grad_snr": _s([snr] * 8),
            "weight_decay_decoupled": [decoupled],
            "weight_decay_lr": [1e-3],
            "update_ratio": _s([ratio] * 8),
        }
    )


def test_over_regularization_at_the_decay_equilibrium():
    # λ‖θ‖ = 0.1·5 = 0.5 against ‖G‖ = 0.5·√(1/2) ≈ 0.35: ratio ≈ 1.4, weights at half their start
    f = get_rule("over_regularization").check(_reg(0.1, 5.0))
    assert f is not None and f.evidence["decay_over_gradient"] == pytest.approx(0.5 / 0.5**1.5)
    assert f.evidence["shrink"] == pytest.approx(0.5)
    assert f.remedies[0].params["weight_decay"] == pytest.approx(0.01)


def test_over_regularization_quiet_when_weights_grew_or_decay_small():
    assert get_rule("over_regularization").check(_reg(0.1, 12.0)) is None  # grew from 10
    assert get_rule("over_regularization").check(_reg(5e-4, 5.0)) is None  # decay 1 % of grad
    assert get_rule("over_regularization").check(_reg(0.0, 5.0)) is None


def test_over_regularization_decoupled_compares_steps():
    # AdamW: lr·λ·‖θ‖ = 1e-3·0.1·5 = 5e-4 against ‖Δθ‖ = 1e-4·5: decay is the whole step
    f = get_rule("over_regularization").check(_reg(0.1, 5.0, decoupled=True, ratio=1e-4))
    assert f is not None and f.evidence["decay_kind"] == "decoupled"
    assert get_rule("over_regularization").check(_reg(0.1, 5.0, decoupled=True)) is None


# -- batch_size -----------------------------------------------------------------------------------


def _batch(snr, ratio=3e-3, batch=2, state="plateau", weight=100.0, grad=1.0, loss=1.0):
    # noise-floor share = ratio·‖θ‖·‖g‖ / (4 L) = 3e-3·100·1/4 = 0.075 by default
    return Evidence(
        {
            "grad_snr": _s([snr] * 8),
            "update_ratio": _s([ratio] * 8),
            "input_stats": {"batch_size": batch},
            "weight_norm": _s([weight] * 8),
            "grad_norm": _s([grad] * 32),
            "loss": _s([loss] * 64),
            "detector_state": state,
            "detector_series": "train",
        }
    )


def test_batch_size_too_small_names_the_noise_scale_and_floor():
    f = get_rule("batch_size").check(_batch(0.01, weight=400.0))  # share 0.3
    assert f is not None and f.evidence["kind"] == "small"
    assert f.evidence["noise_scale"] == pytest.approx(200.0)
    assert f.evidence["noise_floor_share"] == pytest.approx(0.3)
    remedies = {r.action: r for r in f.remedies}
    assert remedies["raise_batch_size"].params["batch_size"] == 200
    accumulate = remedies["accumulation_change"]  # automatic where the Guard owns accumulation
    assert accumulate.automatic
    assert accumulate.params["factor"] == min(
        max(round(1 / f.evidence["batch_over_noise_scale"]), 2), 8
    )
    assert 0.6 < f.confidence <= 0.9


@pytest.mark.parametrize(
    ("snr", "weight", "fires"),
    [
        (0.1, 400.0, False),  # B = B_noise/10 exactly: not far enough below
        (0.099, 400.0, True),
        (0.01, 210.0, True),  # share 0.1575: just above the detector's plateau margin 0.15
        (0.01, 190.0, False),  # share 0.1425: within the margin, a minimum as far as we can tell
        (0.01, 100.0, False),
    ],
)
def test_batch_size_needs_a_noise_floor_above_the_plateau_margin(snr, weight, fires):
    assert (get_rule("batch_size").check(_batch(snr, weight=weight)) is not None) == fires


def test_batch_size_only_where_the_run_stalls_short_of_convergence():
    rule = get_rule("batch_size")
    assert rule.check(_batch(0.01, weight=400.0, state="improving")) is None
    assert rule.check(_batch(0.01, weight=400.0, state="slow")) is not None  # a noisy crawl
    assert rule.check(_batch(0.01, ratio=0.2, weight=400.0)) is None  # steps that big: the LR
    # the loss already fell an order of magnitude: convergence, not a batch problem
    fallen = dict(_batch(0.01, weight=400.0))
    fallen["loss_initial"] = 20.0
    assert rule.check(Evidence(fallen)) is None
    fallen["loss_initial"] = 5.0  # fell 5×, short of a decade: learning, so not hurt either
    assert rule.check(Evidence(fallen)) is None


def test_batch_size_small_needs_the_loss_hurt():
    """A gradient below its noise with a floor above the margin is also a healthy small-batch
    run before its schedule anneals the LR: there the batch speaks only on a hurt loss."""
    rule = get_rule("batch_size")
    fell = dict(_batch(0.01, weight=400.0))
    fell["loss_initial"] = 1.5  # fell 33 %: learning, short of an order of magnitude
    assert rule.check(Evidence(fell)) is None
    fell["loss_initial"] = 1.05  # 5 %: stalled near its start
    assert rule.check(Evidence(fell)) is not None
    # Under a constant LR the floor stays (no schedule will anneal it): the batch speaks.
    fell["loss_initial"] = 1.5
    fell["lr/0"] = _s([0.02] * 8)
    assert rule.check(Evidence(fell)) is not None
    fell["lr/0"] = _s([0.02] * 4 + [0.015] * 4)  # a schedule at work: it will anneal the floor
    assert rule.check(Evidence(fell)) is None


def test_batch_size_too_large_is_reported_below_half():
    f = get_rule("batch_size").check(_batch(50.0, batch=1024))
    assert f is not None and f.confidence < 0.5 and f.evidence["kind"] == "large"


def test_batch_size_from_samples_seen():
    data = dict(_batch(0.01, weight=400.0))
    del data["input_stats"]
    data["samples_seen"] = (np.array([49, 99]), np.array([800.0, 1600.0]))
    f = get_rule("batch_size").check(Evidence(data))
    assert f is not None and f.evidence["batch_size"] == pytest.approx(16.0)


# -- symptoms ------------------------------------------------------------------------------


def test_tiny_updates_from_over_clipping_are_not_lr_too_low():
    data = dict(_clip(1.0))
    data["update_ratio"] = _s([1e-6] * 8)
    findings = run_rules(Evidence(data, step=500))
    by_cause = {f.cause: f for f in findings}
    assert findings[0].cause == "over_clipping"
    assert by_cause["lr_too_low"].evidence["explained_by"] == ["over_clipping"]


# -- missing_warmup -------------------------------------------------------------------------------


def _no_warmup(**overrides):
    """A post-LN Transformer at step 49 under AdamW at a constant LR: first step 5 % of the
    weights, the loss at 97 % of where it started."""
    data = {
        "optimizer_type": "AdamW",
        "optimizer_beta2": 0.999,
        "post_norm_transformer_layers": 2,
        "detector_state": "hidden_progress",
        "detector_series": "train",
        "update_ratio": (np.array([0, 25]), np.array([0.05, 0.011])),
        "lr/0": (np.array([0]), np.array([1e-2])),
        "loss": _s(np.r_[[2.42] * 8, [2.35] * 42], stride=1),
    }
    data.update(overrides)
    return Evidence(data, step=49)


def test_missing_warmup_fires_on_a_full_lr_start_that_never_got_going():
    f = get_rule("missing_warmup").check(_no_warmup())
    assert f is not None and f.cause == "missing_warmup"
    assert f.evidence["first_update_ratio"] == pytest.approx(0.05)
    assert f.evidence["fallen"] == pytest.approx(1 - 2.35 / 2.42)
    assert f.confidence == pytest.approx(0.6 + 0.2 * np.log10(5.0), abs=1e-3)
    # Ma & Yarats: 2 / (1 − β₂) steps, automatic; and Adam's motion is no progress to wait on
    assert [(r.action, r.params, r.automatic) for r in f.remedies] == [
        ("warmup", {"length": 2000}, True)
    ]
    assert f.evidence["explains_weight_motion"] is True


def test_missing_warmup_length_follows_beta2_and_defaults_to_adams():
    f = get_rule("missing_warmup").check(_no_warmup(optimizer_beta2=0.98))
    assert f is not None and f.remedies[0].params == {"length": 100}
    f = get_rule("missing_warmup").check(_no_warmup(optimizer_beta2=None))
    assert f is not None and f.remedies[0].params == {"length": 2000}


@pytest.mark.parametrize(
    "overrides",
    [
        # the user's schedule warmed up: the LR rose from its first value
        {"lr/0": (np.array([0, 10, 20]), np.array([1e-3, 5e-3, 1e-2]))},
        # unstuck's own multiplier rose (a warm-up it already ran)
        {"lr_multiplier": (np.array([49, 99]), np.array([0.025, 0.05]))},
        # the loss got going: more than 10 % below its start
        {"loss": _s(np.r_[[2.42] * 8, [2.1] * 42], stride=1)},
        # first steps of a healthy size
        {"update_ratio": (np.array([0, 25]), np.array([0.009, 0.011]))},
        # no post-LN Transformer layer: a flat start there is as often a slow start
        {"post_norm_transformer_layers": 0},
        # SGD's step scales with the gradient; RAdam rectifies its own first steps
        {"optimizer_type": "SGD"},
        {"optimizer_type": "RAdam"},
        # a loss that falls, and the validation series
        {"detector_state": "improving"},
        {"detector_series": "val"},
        # the LR history no longer reaches back to the start
        {"lr/0": (np.array([30]), np.array([1e-2]))},
    ],
)
def test_missing_warmup_stays_quiet(overrides):
    assert get_rule("missing_warmup").check(_no_warmup(**overrides)) is None


def test_missing_warmup_outranks_the_lr_cut_it_explains():
    ranked = run_rules(_no_warmup(), known_roots=frozenset())
    codes = [f.cause for f in ranked]
    assert "missing_warmup" in codes
    assert codes.index("missing_warmup") < codes.index("lr_too_high")
