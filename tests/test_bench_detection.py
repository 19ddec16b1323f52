"""The plateau-detection benchmark itself: scoring, the label rule, the baselines, the curves."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import baselines
import curves
import detection

# ----------------------------------------------------------------------------- scoring


def test_score_counts_tp_fp_fn_and_ignores_repeats() -> None:
    intervals = [(100, 200), (500, 600)]  # tolerance: 10 steps after each end
    dets = [50, 120, 150, 205, 215, 700]
    r = detection.score_curve(intervals, dets)
    # 50: FP (before); 120: TP (latency 20); 150 and 205: ignored (interval already matched,
    # 205 inside the tolerance); 215: FP (past e + tol); 700: FP; (500, 600): FN.
    assert (r["tp"], r["fp"], r["fn"], r["ignored"]) == (1, 3, 1, 2)
    assert r["latencies"] == [20.0]


def test_score_tolerance_and_one_tp_per_interval() -> None:
    r = detection.score_curve([(100, 200)], [209])
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["latencies"] == [109.0]
    r = detection.score_curve([(100, 200)], [211])
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    # two intervals, one detection each, in any order of the detection list
    r = detection.score_curve([(0, 100), (300, 400)], [350, 40])
    assert (r["tp"], r["fp"], r["fn"], r["latencies"]) == (2, 0, 0, [40.0, 50.0])
    assert detection.score_curve([], [5, 6])["fp"] == 2


def test_summarize_metrics_and_false_alarm_rate() -> None:
    rows = [
        {
            **detection.score_curve([(100, 200)], [150, 400]),
            "n_steps": 1000,
            "no_plateau": False,
            "n_det": 2,
        },
        {
            **detection.score_curve([], [10, 20, 30]),
            "n_steps": 20_000,
            "no_plateau": True,
            "n_det": 3,
        },
    ]
    s = detection.summarize(rows)
    assert s["precision"] == pytest.approx(1 / 5)
    assert s["recall"] == pytest.approx(1.0)
    assert s["f1"] == pytest.approx(2 * 0.2 / 1.2)
    assert s["false_alarms_per_10k"] == pytest.approx(3 / 20_000 * 1e4)
    assert s["median_latency"] == 50.0


# ----------------------------------------------------------------------------- label rule


def _flat_middle(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(1, n + 1)
    logy = np.where(t < 300, 1 + 0.02 * (300 - t), 0.0)
    logy = np.where(t > 700, -1 - 0.02 * (t - 700), logy)
    return t, np.exp(logy)


def test_label_finds_flat_stretch_with_its_bounds() -> None:
    t, y = _flat_middle()
    assert curves.label_plateaus(t, y) == [(300, 700)]
    # a gentle 0.5 % wobble stays in the 1 % band
    wob = y * np.exp(0.0045 * np.sin(t / 7.0) * ((t >= 300) & (t <= 700)))
    assert curves.label_plateaus(t, wob) == [(300, 700)]


def test_label_power_law_and_short_flat_bits_are_not_plateaus() -> None:
    t = np.arange(1, 20_001)
    assert curves.label_plateaus(t, t**-0.3) == []
    assert curves.label_plateaus(t[::10], (t[::10] + 5.0) ** -0.15) == []
    # flat from the first step: 7 logging intervals are too short, 8 are enough
    tt = t[:100]
    assert curves.label_plateaus(tt, np.exp(-0.05 * np.maximum(tt - 8, 0))) == []
    assert curves.label_plateaus(tt, np.exp(-0.05 * np.maximum(tt - 9, 0))) == [(1, 9)]
    assert curves.label_plateaus(tt * 10, np.exp(-0.05 * np.maximum(tt - 9, 0))) == [(10, 90)]
    # converging exponential: the plateau runs to the end
    te = np.arange(1, 5001)
    lab = curves.label_plateaus(te, 0.1 + 2 * np.exp(-te / 200.0) * te**-0.3)
    assert len(lab) == 1
    assert lab[0][1] == 5000


def test_label_hidden_progress_exception() -> None:
    t, y = _flat_middle()
    assert curves.label_plateaus(t, y, 0.01 * t) == []  # distance grows steadily: not a plateau
    sat = 5.0 * (1 - np.exp(-t / 30.0))  # distance that stopped growing early
    assert curves.label_plateaus(t, y, sat) == [(300, 700)]
    assert curves.label_plateaus(t, y, np.full(len(t), np.nan)) == [(300, 700)]


# ----------------------------------------------------------------------------- baselines


def _fires(rule: object, values: list[float], steps: list[int] | None = None) -> list[int]:
    steps = list(range(len(values))) if steps is None else steps
    out: list[int] = []
    for s, v in zip(steps, values, strict=True):
        n = len(rule.plateaus)  # type: ignore[attr-defined]
        rule.update(s, v)  # type: ignore[attr-defined]
        if len(rule.plateaus) > n:  # type: ignore[attr-defined]
            out.append(s)
    return out


def test_rlrop_fires_after_patience_plus_one_bad_points() -> None:
    flat = [1.0] * 40
    assert _fires(baselines.RLROP(), flat) == [11, 22, 33]  # num_bad_epochs > 10
    # relative threshold: falling 5.5e-5 in total over 11 points (< 1e-4 of best) is all "bad"
    creep = [1000.0 * (1 - 0.5e-5) ** k for k in range(15)]
    assert _fires(baselines.RLROP(), creep) == [11]
    # NaN counts as a bad point
    assert _fires(baselines.RLROP(), [1.0] + [math.nan] * 11) == [11]


def test_keras_absolute_min_delta_and_wait_ge_patience() -> None:
    assert _fires(baselines.KerasRLROP(), [1.0] * 40) == [10, 20, 30]  # wait >= 10
    # large loss, abs fall 0.005 per point: better for Keras (> 1e-4) every point; torch needs a
    # fall of 1e-4 * 1000 = 0.1 below best, reached at point 21 only
    big_creep = [1000.0 - 0.005 * k for k in range(30)]
    assert _fires(baselines.KerasRLROP(), big_creep) == []
    assert _fires(baselines.RLROP(), big_creep) == [11]
    # small loss falling 1 % per point: better for torch every point; Keras needs an absolute
    # fall of 1e-4 (10 % of 1e-3): points 1-10 are bad (fires at 10), point 11 is better, and
    # from 0.99^11 it takes 12 points to fall 1e-4 again, so points 12-21 are bad (fires at 21)
    small = [1e-3 * (1 - 1e-2) ** k for k in range(30)]
    assert _fires(baselines.KerasRLROP(), small) == [10, 21]
    assert _fires(baselines.RLROP(), small) == []


def test_fastai_fires_on_every_non_improving_point() -> None:
    assert _fires(baselines.FastaiRLROP(), [3.0, 2.0, 2.0, 1.0, 1.5, 1.2, 0.5]) == [2, 4, 5]
    assert _fires(baselines.FastaiRLROP(), [3.0, 2.0, 1.0]) == []


def test_mean50_feeds_group_means() -> None:
    rule = baselines.Mean50(baselines.RLROP())
    # constant every step: means are fed at steps 50, 100, ...; the 12th feed (step 600) fires
    assert _fires(rule, [1.0] * 1300) == [600, 1150]
    # a spike inside a group is averaged away: a falling series never fires
    vals = [1.0 / (1 + k / 100) * (5.0 if k % 97 == 0 else 1.0) for k in range(3000)]
    assert _fires(baselines.Mean50(baselines.RLROP()), vals) == []


def test_ema_slope_fires_when_flat_and_rearms_after_window() -> None:
    assert _fires(baselines.EmaSlope(), [1.0] * 300) == [99, 199, 299]
    falling = [math.exp(-0.01 * k) for k in range(300)]
    assert _fires(baselines.EmaSlope(), falling) == []


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_complete() -> None:
    a = curves.generate_curves(seed=0)
    b = curves.generate_curves(seed=0)
    assert len(a) >= 200
    assert {c.family for c in a} == set(curves.FAMILIES)
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name
        assert x.plateaus == y.plateaus
        np.testing.assert_array_equal(x.steps, y.steps)
        np.testing.assert_array_equal(x.values, y.values)
    for c in a:
        if c.family in curves.NO_PLATEAU_FAMILIES or c.series == "val":
            assert c.no_plateau
            assert c.plateaus == []
        assert max(len(c.steps) for c in a) <= 100_000
    assert any(not c.no_plateau for c in a if c.family == "grokking")
    c1 = curves.generate_curves(seed=1, n_per_family=1)
    assert any(not np.array_equal(x.values, y.values) for x, y in zip(a, c1, strict=False))


def test_real_curves_file_loads() -> None:
    real = detection.load_real_curves()
    assert len({c.name.rsplit("/", 1)[0] for c in real}) >= 20
    assert any(c.plateaus for c in real)
    assert any(c.no_plateau for c in real)


def test_mean50_feeds_raw_points_when_logged_every_50_steps() -> None:
    rule = baselines.Mean50(baselines.RLROP())
    fired = _fires(rule, [1.0] * 30, steps=[50 * (k + 1) for k in range(30)])
    # the first point is flushed by the second call (step 100) before that call's raw point, so
    # the 12th feed, the one that fires, is at step 600; the next firing 11 feeds later
    assert fired == [600, 1150]


def test_feed_records_the_step_of_the_update_that_added_a_plateau() -> None:
    class Stub:
        def __init__(self) -> None:
            self.plateaus: list[object] = []
            self.seen_distance: list[object] = []

        def update(self, step: int, value: float, distance: object = None) -> str:
            self.seen_distance.append(distance)
            if step in (30, 70):
                self.plateaus.append(object())
            return "plateau"

    steps = np.arange(10, 110, 10)
    dist = np.where(steps % 20 == 0, steps / 10.0, np.nan)
    c = curves.Curve("x", "exp_decay", steps, np.ones(10), dist, [(20, 60)], False)
    stub = Stub()
    dets, err, _ = detection._feed(stub, c, use_distance=True)
    assert (dets, err) == ([30, 70], None)
    assert stub.seen_distance[:3] == [None, 2.0, None]


# ----------------------------------------------------------------------------- stronger baselines


def test_dlib_robust_fires_on_a_flat_stretch_not_on_a_steady_fall() -> None:
    rng = np.random.default_rng(1)
    fall = np.linspace(2.0, 1.0, 600) * np.exp(0.02 * rng.standard_normal(600))
    det = baselines.DlibRobust(threshold=200)
    for i, v in enumerate(fall):
        det.update(i, float(v))
    assert det.plateaus == []
    flat = np.r_[fall, np.ones(400) * np.exp(0.02 * rng.standard_normal(400))]
    det = baselines.DlibRobust(threshold=200)
    for i, v in enumerate(flat):
        det.update(i, float(v))
    assert det.plateaus, "200 flat values after the fall must reach the threshold"
    assert det.plateaus[0].detected_at is not None and det.plateaus[0].detected_at >= 600 + 150


def test_dlib_count_matches_the_published_loop() -> None:
    """The vectorised count equals dlib's loop (running_gradient over the newest values)."""
    rng = np.random.default_rng(2)
    y = np.r_[np.linspace(3, 1, 30), np.ones(20)] + 0.05 * rng.standard_normal(50)
    newest_first = y[::-1]

    def loop(values: np.ndarray, p: float) -> int:
        count = 0
        for j in range(1, values.size + 1):
            if j <= 2:
                continue
            x = np.arange(j, dtype=float)
            v = values[:j]
            slope, icpt = np.polyfit(x, v, 1)
            rss = float(np.sum((v - (slope * x + icpt)) ** 2))
            se = math.sqrt(rss / (j - 2) * 12.0 / (j**3 - j))
            prob = 0.5 * (1 + math.erf(slope / se / math.sqrt(2)))
            if prob < p:
                count = j
        return count

    assert baselines.DlibRobust.count(newest_first, 0.51) == loop(newest_first, 0.51)


def test_ray_plateau_is_an_absolute_std_rule() -> None:
    det = baselines.RayPlateau()
    for i in range(8):
        det.update(i, 1.0 + 0.001 * i)
    # std of 4 results < 0.01: fires at the 4th result, re-armed, fires again at the 8th
    assert [e.detected_at for e in det.plateaus] == [3, 7]
    big = baselines.RayPlateau()
    for i in range(20):
        big.update(i, 1000.0 + 0.5 * (i % 2))  # a flat loss at a large scale never fires
    assert big.plateaus == []


# ----------------------------------------------------------------------------- wild family


def test_wild_split_is_a_fixed_hash_of_the_name() -> None:
    # The rule is written down before tuning; these assignments must never change.
    assert detection.wild_split("tb_satd") == "dev"
    assert detection.wild_split("tb_deepsc") == "held_out"
    names = [f"log_{i}" for i in range(200)]
    dev = sum(detection.wild_split(n) == "dev" for n in names)
    assert 70 < dev < 130  # about half


def test_summarize_wild_counts_like_run_wild() -> None:
    rows = [
        {
            "hits": 2,
            "false_alarms": 1,
            "ambiguous": 1,
            "labels_clear": 2,
            "labels_found": 1,
            "points": 5000,
            "val_rising_label": True,
            "val_rise_called": True,
        },
        {
            "hits": 0,
            "false_alarms": 1,
            "ambiguous": 0,
            "labels_clear": 0,
            "labels_found": 0,
            "points": 5000,
            "val_rising_label": False,
            "val_rise_called": False,
        },
    ]
    s = detection.summarize_wild(rows)
    assert s["precision"] == pytest.approx(2 / 4)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["false_alarms_per_10k"] == pytest.approx(2.0)
    assert (s["clean_logs_with_fa"], s["clean_logs"]) == (1, 1)
    assert (s["val_rise_found"], s["val_rise_labelled"]) == (1, 1)


def test_wild_family_is_skipped_with_one_line_when_absent(tmp_path, capsys) -> None:
    assert detection.run_wild_family(tmp_path / "nowhere", True, 1, True) is None
    assert capsys.readouterr().out.count("\n") == 1
