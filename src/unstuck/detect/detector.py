"""``PlateauDetector``: a streaming, statistical answer to "has this series stopped improving?".

ReduceLROnPlateau asks "no new best in N checks?" — so noise triggers it early, a spike resets
it, and a slow descent looks like a stall. This detector instead asks a trend question of the
(log) series, with the noise measured from the data:

* **Progress is judged against the run's own course.** A trailing window's *drop* (the fall of
  its Theil–Sen fit, in log units, with Sen's confidence interval on bin means: ``trend.py``,
  ``history.py``) is compared with the drop of the window of the same length *in log-time*
  just before it (``[a²/T, a]`` for ``[a, T]``): a power law falls as much over both, a
  constant-rate descent falls more over the later one, whatever its scale or floor; a run
  that has stopped falls by much less.
* **Plateau** = a one-sided equivalence test: the upper bound of the window's drop is below
  ``pace_ratio`` (0.15) of the drop before it (at most ``max_flat_drop``), or, with no faster
  course before it (flat from the start), below ``flat_margin`` (2 %) on ``4·min_points`` bins.
  The window holds at least ``2·min_points`` bins and 1/6 of the run; the longest passing one
  dates the start. The test repeats at every closed bin, so its level is halved (Optuna's
  WilcoxonPruner warns that repeated looks double the false rate): one-sided 1.25 % for
  ``z = 1.96``.
* The plateau ends when the series falls clearly again: the recent window's drop is
  significantly above the margin the plateau was called with, or the last bins all lie well
  below its level (the drop after an LR cut).
* **Hidden progress**: when the loss passes the plateau test but the parameter distance
  ``‖θ − θ₀‖`` has a significant trend that moved it by at least ``hidden_progress_growth``
  (relative) over the same window, the state is ``hidden_progress`` (wait; do not act).
  Without a distance signal (offline logs) this check is skipped and ``stats()`` says so.
* **Oscillating**: not significantly falling, and structured swings (spread above
  ``oscillation_sigma`` in log units with a lag-1 autocorrelation of magnitude above 0.3),
  between bins or inside them. **Diverging**: a rise. Either *persistent* (some window of a
  plateau's size rises significantly, at the corrected level, by more than ``flat_margin``,
  for 4 decisions in a row, with the series above its noise-robust best: a validation loss
  creeping up is overfitting, never a plateau) or *fast* (even the most favourable bound of
  the recent trend rises by more than ``epsilon`` per run-length, at the corrected level, on
  two decisions in a row unless the loss doubled its best), or a *shift* (the last bins all
  stand above twice the best, beyond the noise: a jump that stays), or ``nonfinite_run``
  non-finite values in a row; ``stats()["rise"]`` says which.

docs/detection.md has the derivation, the defaults and how they were calibrated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from unstuck.detect.history import BinnedSeries
from unstuck.detect.trend import Trend, coarsen, robust_trend, theil_sen_windows
from unstuck.types import DetectorState, Plateau

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_Z",
    "PlateauDetector",
    "detect_plateaus",
]

# The "fast" rise test (docs/detection.md), calibrated on the generated curves before:
DEFAULT_EPSILON = 0.15  # projected log-rise over the elapsed span that is a fast divergence
DEFAULT_Z = 1.96  # Sen interval level (two-sided 95 %) for every trend decision
DEFAULT_PACE_RATIO = 0.15  # flat: falls by < this share of the course before (dev grid, docs)
DEFAULT_FLAT_MARGIN = 0.02  # ... or, with no course before it, by < 2 % (log; dev grid, docs)
MAX_FLAT_DROP = 0.15  # ... and never by more than this (log units; dev grid {0.15, 0.25, 0.3})
SEQUENTIAL_LOOKS = 2  # WilcoxonPruner's warning: repeated looks ≈ 2× the nominal false rate
FLAT_WINDOW_FACTOR = 4  # a flat call with no course before it needs 4·min_points bins
RISE_CONFIRM = 4  # decisions in a row a persistent rise must hold (min_points / 2)
FAST_CONFIRM = 2  # decisions in a row a fast rise must hold (one look is a fluke's chance) ...
BLOWUP_RATIO = math.log(2.0)  # ... unless it doubled its best (Lightning Fabric's spike rtol 2)
# and stands 3 residual deviations above it (the multiple of the other level tests here)
DEFAULT_MIN_POINTS = 8  # fewest bins a trend is tested on
DEFAULT_CAPACITY = 64  # bins kept: between 64 and 128 over the whole run
WINDOW_GROWTH = 1.5  # trailing windows tested: min_points, ×1.5, ×2.25 ... up to the whole run
RECENT_FRACTION = 0.25  # the "recent" window for improving/slow/oscillating/diverging
OSCILLATION_SIGMA = 0.1  # spread of bin means around the trend (log units, ≈ ±10 %) ...
OSCILLATION_AUTOCORR = 0.3  # ... with |lag-1 autocorrelation| above this: structure, not noise
MIN_PLATEAU_FRACTION = 1 / 6  # a flat stretch shorter than this share of the run is a pause
MIN_WINDOW_FACTOR = 2  # a plateau window holds at least 2·min_points bins ...
WARMUP_FACTOR = 2  # ... and no plateau is called before 2·min_points points were seen
MIN_WITHIN_POINTS = 8  # points a bin needs before its own spread and autocorrelation count
NONFINITE_RUN = 3  # non-finite values in a row that mean the run has diverged
EARLY_DROP = 0.1  # the series "fell meaningfully" once it dropped 10 % below its start
NEAR_CONVERGENCE_DROP = math.log(10.0)  # without a gradient SNR: an order of magnitude fallen
MIN_DISTANCE_POINTS = 4  # distance samples the hidden-progress trend needs
HIDDEN_PROGRESS_GROWTH = 0.05  # relative move of ‖θ − θ₀‖ over the plateau window
VALUE_BOUND = 1e150  # linear-scale values are clipped here (their squares must stay finite)
LOG_FLOOR = 1e-12  # values ≤ 0 on a log scale are treated as this

STATE_VERSION = 1


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


class PlateauDetector:
    """Streaming plateau detector for one monitored series.

    Args:
        series: the name reported on plateaus (``"train"``, ``"val"`` or any metric).
        mode: ``"min"`` for losses, ``"max"`` for metrics that should grow.
        scale: ``"log"`` (relative changes), ``"linear"`` (changes relative to the series'
            range; for values that can be ≤ 0) or ``"auto"`` (log for ``min``, linear for
            ``max``).
        epsilon: the projected rise over the elapsed span that is a fast divergence.
        pace_ratio: a window is flat when it falls by less than this share of what the run
            fell over the same log-time just before it.
        flat_margin: with no faster course before a window, it is flat when it falls by less
            than this (log units); also the least rise that is a rise.
        max_flat_drop: a window that falls by more than this (log units) is never flat.
        z: confidence level of every trend interval, as a normal quantile.
        min_points: fewest bins (= points, early in a run) before any verdict.
        capacity: bins kept; the history holds between ``capacity`` and ``2·capacity``.
        distance_signal: ``True`` when ``distance`` will be passed (a live run): no plateau is
            called before the hidden-progress check has ``MIN_DISTANCE_POINTS`` samples, so a
            run whose weights are moving is not first called stuck and then un-called.
        distance_scale: the size of the parameters (``‖θ₀‖``), if known; hidden progress then
            needs the weights to move by ``hidden_progress_growth`` of at least that much.
    """

    def __init__(
        self,
        series: str = "train",
        mode: str = "min",
        *,
        scale: str = "auto",
        epsilon: float = DEFAULT_EPSILON,
        z: float = DEFAULT_Z,
        min_points: int = DEFAULT_MIN_POINTS,
        capacity: int = DEFAULT_CAPACITY,
        hidden_progress_growth: float = HIDDEN_PROGRESS_GROWTH,
        oscillation_sigma: float = OSCILLATION_SIGMA,
        pace_ratio: float = DEFAULT_PACE_RATIO,
        flat_margin: float = DEFAULT_FLAT_MARGIN,
        max_flat_drop: float = MAX_FLAT_DROP,
        distance_signal: bool = False,
        distance_scale: float | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"PlateauDetector: mode must be 'min' or 'max', got {mode!r}")
        if scale not in ("auto", "log", "linear"):
            raise ValueError(
                f"PlateauDetector: scale must be 'auto', 'log' or 'linear', got {scale!r}"
            )
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"PlateauDetector: epsilon must be > 0, got {epsilon!r}")
        if not (z > 0 and math.isfinite(z)):
            raise ValueError(f"PlateauDetector: z must be > 0, got {z!r}")
        if not isinstance(min_points, int) or min_points < 4:
            raise ValueError(f"PlateauDetector: min_points must be an int ≥ 4, got {min_points!r}")
        if not isinstance(capacity, int) or capacity < 2 * min_points:
            raise ValueError(
                f"PlateauDetector: capacity must be an int ≥ 2·min_points, got {capacity!r}"
            )
        self.series = series
        self.mode = mode
        self.scale = ("log" if mode == "min" else "linear") if scale == "auto" else scale
        self.epsilon = float(epsilon)
        self.z = float(z)
        self.min_points = min_points
        self.pace_ratio = float(pace_ratio)
        self.flat_margin = float(flat_margin)
        self.max_flat_drop = float(max_flat_drop)
        # The plateau call is one-sided at the level of ``z`` divided by the looks correction.
        alpha = (1.0 - NormalDist().cdf(self.z)) / SEQUENTIAL_LOOKS
        self._z_plateau = NormalDist().inv_cdf(1.0 - alpha)
        self.hidden_progress_growth = float(hidden_progress_growth)
        self.oscillation_sigma = float(oscillation_sigma)
        self.distance_signal = bool(distance_signal)
        if distance_scale is not None and not (
            distance_scale >= 0 and math.isfinite(distance_scale)
        ):
            raise ValueError(
                "PlateauDetector: distance_scale must be a finite number ≥ 0, "
                f"got {distance_scale!r}"
            )
        self.distance_scale = None if distance_scale is None else float(distance_scale)
        self._bins = BinnedSeries(capacity)
        self._distance = BinnedSeries(max(capacity // 2, 8))
        self.state = DetectorState.UNKNOWN
        self.plateaus: list[Plateau] = []
        self.n_points = 0
        self.n_nonfinite = 0
        self.n_nonpositive = 0
        self._nonfinite_run = 0
        self._first_step: float | None = None
        self._last_step: float | None = None
        self._min_gap = math.inf
        self._gradient_snr: float | None = None
        self._boundary: int | None = None  # plateau windows start after this step
        self._plateau_margin = 0.0  # the margin the open plateau was called with
        self._rise_run = 0  # decisions in a row that saw a persistent rise
        self._fast_run = 0  # decisions in a row that saw a fast rise
        self._stats: dict[str, Any] = {}

    # -- feeding ----------------------------------------------------------------------------
    @property
    def current(self) -> Plateau | None:
        """The open plateau, if the series is on one now."""
        if self.plateaus and self.plateaus[-1].end is None:
            return self.plateaus[-1]
        return None

    def update(
        self,
        step: int | float,
        value: Any,
        *,
        distance: Any = None,
        gradient_snr: Any = None,
    ) -> DetectorState:
        """Add one point and return the state. Non-finite values are counted, never raised."""
        return self.update_many([step], [value], distance=distance, gradient_snr=gradient_snr)

    def update_many(
        self,
        steps: Sequence[int | float] | np.ndarray,
        values: Sequence[Any] | np.ndarray,
        *,
        distance: Any = None,
        gradient_snr: Any = None,
    ) -> DetectorState:
        """Add several points (one flush of a live run) and decide once.

        ``distance`` (``‖θ − θ₀‖``) is a number taken as of the last step, or a
        ``(steps, distances)`` pair of samples; ``gradient_snr`` is as of the last step.
        Steps that go backwards are clamped to the last step seen.
        """
        steps_list = list(steps)
        values_list = list(values)
        if len(steps_list) != len(values_list):
            raise ValueError(
                f"update_many: {len(steps_list)} steps but {len(values_list)} values; "
                "pass one step per value"
            )
        closed = False
        for raw_step, raw_value in zip(steps_list, values_list):
            step = _finite(raw_step)
            if step is None:
                continue
            if self._last_step is not None:
                if step < self._last_step:
                    step = self._last_step
                elif step > self._last_step:
                    self._min_gap = min(self._min_gap, step - self._last_step)
            if self._first_step is None:
                self._first_step = step
            self._last_step = step
            value = _finite(raw_value)
            if value is None:
                self.n_nonfinite += 1
                self._nonfinite_run += 1
                continue
            self._nonfinite_run = 0
            self.n_points += 1
            closed |= self._bins.add(step, self._transform(value))
        if isinstance(distance, tuple) and len(distance) == 2:
            for d_step, d_value in zip(*distance):
                ds, dv = _finite(d_step), _finite(d_value)
                if ds is not None and dv is not None:
                    self._distance.add(ds, min(max(dv, -VALUE_BOUND), VALUE_BOUND))
        else:
            d = _finite(distance)
            if d is not None and self._last_step is not None:
                self._distance.add(self._last_step, min(max(d, -VALUE_BOUND), VALUE_BOUND))
        snr = _finite(gradient_snr)
        if snr is not None:
            self._gradient_snr = snr
        # Decide when a bin closed (the trend tests read closed bins only), on a run of
        # non-finite values, and on the first finite value after one (leaving that verdict
        # needs no new bin). Re-deciding at every point while diverging, as this once did,
        # re-tested the same bins: a 100k-point diverging log took minutes to analyse.
        after_nonfinite = self._stats.get("reason") == "nonfinite" and self._nonfinite_run == 0
        if closed or self._nonfinite_run >= NONFINITE_RUN or after_nonfinite:
            self._evaluate()
        return self.state

    def _transform(self, value: float) -> float:
        if self.scale == "log":
            if value <= 0:
                self.n_nonpositive += 1
                value = LOG_FLOOR
            y = math.log(value)
        else:
            # Bounded so that sums of squares stay finite: beyond this nothing is a plateau.
            y = min(max(value, -VALUE_BOUND), VALUE_BOUND)
        return -y if self.mode == "max" else y

    # -- deciding ---------------------------------------------------------------------------
    def _elapsed(self) -> float:
        assert self._first_step is not None and self._last_step is not None
        gap = self._min_gap if math.isfinite(self._min_gap) else 1.0
        return self._last_step - self._first_step + gap

    def _window_sizes(self, available: int) -> list[int]:
        sizes: list[int] = []
        n = float(self.min_points)
        while int(n) < available:
            if not sizes or int(n) != sizes[-1]:
                sizes.append(int(n))
            n *= WINDOW_GROWTH
        sizes.append(available)
        recent = max(self.min_points, int(available * RECENT_FRACTION))
        if recent not in sizes and recent <= available:
            sizes.append(recent)
        return sorted(set(sizes))

    def _evaluate(self) -> None:
        step = int(self._last_step) if self._last_step is not None else 0
        if self._nonfinite_run >= NONFINITE_RUN:
            self._stats = {"reason": "nonfinite", "nonfinite_run": self._nonfinite_run}
            self._set_state(DetectorState.DIVERGING, step)
            return
        bins = self._bins.arrays()
        x, y = bins["x"], bins["y"]
        if x.size < self.min_points or np.ptp(x) <= 0:
            self._set_state(DetectorState.UNKNOWN, step)
            return
        horizon = self._elapsed()
        if self.scale == "log":
            unit = 1.0
        else:
            unit = max(float(np.ptp(y)), abs(float(np.median(y))), 1e-12)
        first, last = bins["first"], bins["last"]
        start_level = float(np.median(y[: self.min_points]))  # where the run began (its bins)
        # Elapsed time of a step, counted from one logging interval before the first point, so
        # that the first point is at one interval, not at zero (log-time windows need t > 0).
        gap = self._min_gap if math.isfinite(self._min_gap) else 1.0
        origin = float(first[0]) - gap
        end = float(last[-1])

        def drop(trend: Trend, n: int) -> tuple[float, float, float]:
            """Decrease of the fit over the last ``n`` bins: estimate, lower, upper bound."""
            span = (end - float(first[-n])) / unit
            return -trend.slope * span, -trend.high * span, -trend.low * span

        def decrease(slope: float) -> float:  # the projection over the elapsed span (diverging)
            return -slope * horizon / unit

        after = self._boundary
        longest_start = end - MIN_PLATEAU_FRACTION * horizon
        eligible = []
        for n in self._window_sizes(int(x.size)):
            first_step = first[-n]
            if after is not None and first_step <= after:
                break
            if (
                first_step <= longest_start
                and n >= MIN_WINDOW_FACTOR * self.min_points
                and self.n_points >= WARMUP_FACTOR * self.min_points
            ):
                eligible.append(n)
        recent_n = max(self.min_points, int(x.size * RECENT_FRACTION))
        sizes = sorted({recent_n, *eligible})
        w = bins["count"]
        trends = dict(zip(sizes, theil_sen_windows(x, y, sizes, self.z, w)))
        strict = dict(zip(eligible, theil_sen_windows(x, y, eligible, self._z_plateau, w)))
        recent = trends[recent_n]
        rx, ry = x[-recent_n:], y[-recent_n:]
        resid = ry - recent.fitted(rx)
        spread = float(np.std(resid)) / unit
        centred = resid - resid.mean()
        denom = float(np.dot(centred, centred))
        autocorr = float(np.dot(centred[1:], centred[:-1])) / denom if denom > 0 else 0.0
        within, within_autocorr = self._within_bins(bins, recent_n, recent.slope, unit)
        level_now = float(recent.fitted(x[-1:])[0])
        # The best level, robust to noise: the lowest mean of min_points consecutive bins (the
        # lowest single bin is noise's extreme, biased low by ~2.5σ on a long flat series).
        k = min(self.min_points, int(y.size))
        best = float(np.min(np.convolve(y, np.ones(k) / k, mode="valid")))
        r_est, r_low, r_high = drop(recent, recent_n)
        # The run's own course before the recent window: the pace it must keep to be progress.
        r_ref = self._reference_drop(bins, recent_n, origin, unit)
        stats: dict[str, Any] = {
            "points": self.n_points,
            "bins": int(x.size),
            "bin_width": self._bins.width,
            "horizon": horizon,
            "recent_window": recent_n,
            "recent_decrease": decrease(recent.slope),
            "recent_decrease_low": decrease(recent.high),
            "recent_decrease_high": decrease(recent.low),
            "recent_drop": r_est,
            "recent_drop_low": r_low,
            "recent_drop_high": r_high,
            "reference_drop": r_ref,
            "spread": spread,
            "autocorr": autocorr,
            "within_spread": within,
            "within_autocorr": within_autocorr,
            "epsilon": self.epsilon,
            "flat_margin": self.flat_margin,
            "pace_ratio": self.pace_ratio,
            "nonfinite": self.n_nonfinite,
            "hidden_progress_check": "distance" if len(self._distance) else "unavailable",
        }
        self._stats = stats
        stats["above_best"] = (level_now - best) / unit

        # Diverging: even the most favourable bound of the recent trend is a rise of more than
        # epsilon per run-length (the projection over the elapsed span).
        # "Above its best" must clear the noise of the best itself (the lowest of many means
        # of k bins sits ~2.5 of their standard errors below the level on a flat series): a
        # series at its best level is not rising, whatever its last few bins do.
        best_noise = 3.0 * spread / math.sqrt(k)
        above = stats["above_best"] > max(self.flat_margin, best_noise)
        # Tested at the corrected level (it repeats at every closed bin, like the plateau
        # test) and held for FAST_CONFIRM decisions: per-step minibatch noise with heavy tails
        # shows a "significant" rise on one short window now and then, a blow-up keeps rising.
        # A blow-up far outside the noise needs no second look.
        fast = blowup = False
        # (on a linear scale, where a ratio has no meaning: half the series' range)
        doubled = BLOWUP_RATIO if self.scale == "log" else 0.5
        if above:
            (strict_recent,) = theil_sen_windows(x, y, [recent_n], self._z_plateau, w)
            fast = decrease(strict_recent.low) < -self.epsilon
            # ... and stands 3 noise deviations above it: per-sample losses (a batch of one)
            # spread over decades, and a doubling is inside their noise
            blowup = stats["above_best"] > max(doubled, 3.0 * spread)
        self._fast_run = self._fast_run + 1 if fast else 0
        if self._fast_run >= FAST_CONFIRM or (fast and blowup):
            stats["rise"] = "fast"
            self._set_state(DetectorState.DIVERGING, step)
            return
        # A level shift: a jump that stays up is no slope to the trend tests (Theil–Sen reads the
        # segments on either side of it), yet the run is now worse than it was.
        # (not while the recent window falls significantly: a jump followed by a steady descent
        # is a spike the run is leaving, pytorch#30873's case, not a run that got worse)
        if r_low <= 0 and self._shifted_up(y, best, doubled if above else math.inf, unit):
            stats["rise"] = "shift"
            self._set_state(DetectorState.DIVERGING, step)
            return
        if fast:  # awaiting its confirmation: no other verdict on a look that saw a blow-up
            stats["rise"] = "unconfirmed"
            return
        # Rising: a significant rise on the recent window, larger than the flat margin. Never a
        # plateau (a validation loss creeping up while training falls is overfitting).
        # Any trailing window a plateau could be called on may show it (a slow rise needs the
        # longer ones to clear the noise), tested at the corrected level like a plateau, as
        # long as the recent window is not falling and the series sits above its best by more
        # than the flat margin.
        rising = r_est < 0 and r_low <= 0 and above
        if rising:
            rising = False
            rise_sizes = [
                n
                for n in self._window_sizes(int(x.size))
                if n >= FLAT_WINDOW_FACTOR * self.min_points and first[-n] <= longest_start
            ]
            for n, trend in zip(
                rise_sizes, theil_sen_windows(x, y, rise_sizes, self._z_plateau, w)
            ):
                est, _, high = drop(trend, n)
                if high < 0 and est < -self.flat_margin:
                    rising = True
                    break
        current = self.current
        if current is not None:
            # Hysteresis, as for leaving a plateau downwards: an open plateau ends in a rise
            # only when the recent window itself clearly rises by more than the flat margin.
            rising = rising and r_high < -self.flat_margin
        # Persistent: the rise must hold over RISE_CONFIRM decisions in a row (each decision
        # is a look; early in a run every point is one, and flukes add up).
        self._rise_run = self._rise_run + 1 if rising else 0
        rising = self._rise_run >= RISE_CONFIRM
        stats["rising"] = rising

        waiting = current is not None or self.state == DetectorState.HIDDEN_PROGRESS
        if waiting and not rising and self._fell_again(x, y, r_low, r_ref, current, unit):
            self._set_state(DetectorState.IMPROVING, step)
            return
        if rising:
            # Reported as ``diverging`` (the state the rest of unstuck reads for a rise);
            # ``stats()["rise"]`` says which test saw it.
            stats["rise"] = "persistent"
            self._set_state(DetectorState.DIVERGING, step)
            return

        # Plateau test: the longest eligible trailing window whose upper bound on the drop is
        # below its margin: a fraction of the drop the run achieved over the preceding window
        # of the same length in log-time, or the flat margin when it had no faster course.
        passing: tuple[int, Trend, float] | None = None
        if self.distance_signal and len(self._distance) < MIN_DISTANCE_POINTS:
            eligible = []  # cannot tell a stall from hidden progress yet
        for n in eligible:
            est, low, high = drop(strict[n], n)
            ref = self._reference_drop(bins, n, origin, unit)
            margin = self._margin(ref)
            # Slowed down: the run fell meaningfully before the window, and the window falls
            # by less than pace_ratio of that. Flat: with no faster course to compare with (a
            # run flat from its start), by less than the flat margin, on twice the bins (a slow
            # steady descent looks flat on its first few points).
            slowed = ref is not None and ref > self.flat_margin and high < margin
            long_enough = n >= FLAT_WINDOW_FACTOR * self.min_points
            flat = high < self.flat_margin and long_enough
            # Still at its starting level: the window's median sits within flat_margin of the
            # first bins' (the run never left where it began) and its trend holds 0. Noise too
            # wide for the slope test (a saddle under minibatch noise) cannot hide that the level
            # has not moved; a run that fell at all, however noisily, is not this.
            unmoved = (
                long_enough
                and low < 0 < high
                and start_level - float(np.median(y[-n:])) < self.flat_margin * unit
            )
            if ((slowed or flat) and low > -margin) or unmoved:
                passing = (n, strict[n], margin)
        structured_between = (
            spread > self.oscillation_sigma and abs(autocorr) > OSCILLATION_AUTOCORR
        )
        structured_within = (
            within > self.oscillation_sigma and abs(within_autocorr) > OSCILLATION_AUTOCORR
        )
        # (as before: even the most favourable projected decrease is under 2·epsilon)
        oscillating = (structured_between or structured_within) and decrease(
            recent.low
        ) < 2 * self.epsilon
        if oscillating and current is None:
            self._set_state(DetectorState.OSCILLATING, step)
            return
        if passing is None and current is not None:
            self._set_state(
                DetectorState.PLATEAU, step
            )  # grey zone: not flat enough to call, not falling
            return
        if passing is not None:
            n, trend, margin = passing
            start = int(first[-n])
            est, low, high = drop(trend, n)
            stats["plateau_window"] = n
            stats["plateau_drop_high"] = high
            stats["plateau_margin"] = margin
            se = max((high - low) / (2 * self._z_plateau), 1e-12)
            confidence = 0.5 * (1 + math.erf((margin - est) / se / 2**0.5))
            hidden = self._hidden_progress(start if current is None else current.start)
            if hidden:
                self._set_state(DetectorState.HIDDEN_PROGRESS, step)
                return
            if current is None:
                self._plateau_margin = margin
                kind = self._kind(x, y, start)
                self.plateaus.append(
                    Plateau(self.series, start, None, kind, round(confidence, 4), step)
                )
            self._set_state(DetectorState.PLATEAU, step)
            return
        # Neither flat nor oscillating nor rising: improving when it falls significantly and by
        # 2·epsilon projected over the elapsed span, else slow (progress, but slow: what the
        # lr_too_low rule reads as a creep).
        significant = decrease(recent.high) > 0
        if significant and decrease(recent.slope) >= 2 * self.epsilon:
            self._set_state(DetectorState.IMPROVING, step)
        else:
            self._set_state(DetectorState.SLOW, step)

    def _margin(self, reference: float | None) -> float:
        """The largest drop over a window that is still flat, given the run's course before it."""
        if reference is None or reference <= self.flat_margin:
            return self.flat_margin
        return min(max(self.pace_ratio * reference, self.flat_margin), self.max_flat_drop)

    def _reference_drop(
        self, bins: dict[str, np.ndarray], n: int, origin: float, unit: float
    ) -> float | None:
        """Drop over the log-time window just before the last ``n`` bins, of the same length.

        The window ``[a, T]`` (elapsed) is compared with ``[a²/T, a]``: a power law falls by the
        same amount over both, a constant-rate descent by more over the later one, and a run
        that has stopped by much less. ``None`` when fewer than ``min_points / 2`` bins (at
        least 2) lie there.
        """
        first, last, x, y = bins["first"], bins["last"], bins["x"], bins["y"]
        a = float(first[-n]) - origin
        t = float(last[-1]) - origin
        lo = origin + a * a / t
        sel = (first >= lo) & (last < float(first[-n]))
        k = int(sel.sum())
        if k < max(2, self.min_points // 2):
            return None
        rx, ry = x[sel], y[sel]
        if k == 2:  # (min_points 4) the course is the step between its two bins
            return float(ry[0] - ry[1]) / unit
        wx, wy = coarsen(rx, ry, bins["count"][sel], 48)
        trend = robust_trend(wx, wy, self.z)
        span = float(last[sel][-1] - first[sel][0]) / unit
        return -trend.slope * span

    @staticmethod
    def _within_bins(
        bins: dict[str, np.ndarray], n: int, slope: float, unit: float
    ) -> tuple[float, float]:
        """Pooled within-bin spread and lag-1 autocorrelation over the last ``n`` bins."""
        count = bins["count"][-n:]
        multi = count >= MIN_WITHIN_POINTS  # the estimator's bias is −1/(n−1): few points lie
        if not multi.any():
            return 0.0, 0.0
        span = (bins["last"][-n:] - bins["first"][-n:])[multi]
        trend_var = slope * slope * span * span / 12.0  # a line's variance over the bin
        var = np.maximum(bins["var"][-n:][multi] - trend_var, 0.0)
        lag = bins["lag_cov"][-n:][multi] - trend_var
        weights = count[multi]
        pooled_var = float(np.average(var, weights=weights))
        if pooled_var <= 0:
            return 0.0, 0.0
        pooled_lag = float(np.average(lag, weights=weights - 1))
        return math.sqrt(pooled_var) / unit, pooled_lag / pooled_var

    def _fell_again(
        self,
        x: np.ndarray,
        y: np.ndarray,
        recent_low: float,
        recent_ref: float | None,
        current: Plateau | None,
        unit: float = 1.0,
    ) -> bool:
        """Clearly falling again: the recent drop's lower bound clears the margin the plateau was
        called with, or the last bins all lie well below the plateau's level (a sharp drop
        after an LR cut)."""
        if recent_low > max(self.flat_margin, self._plateau_margin):
            return True
        if current is None:
            return False
        on = y[(x >= current.start)]
        if on.size < self.min_points:
            return False
        level = float(np.median(on[: max(on.size // 2, 1)]))
        noise = 1.4826 * float(np.median(np.abs(on - np.median(on))))
        tail = y[-(self.min_points // 2) :]
        return bool(np.all(tail < level - max(EARLY_DROP, 3 * noise)))

    def _shifted_up(self, y: np.ndarray, best: float, margin: float, unit: float) -> bool:
        """The last ``min_points / 2`` bins all stand above the best level by more than
        ``margin`` (a doubling) and by more than three times the bin-to-bin noise before them.

        The noise is the MAD of the earlier bins' first differences (÷√2): one jump is one
        difference, so it does not inflate the noise it is judged against.
        """
        k = max(self.min_points // 2, 2)
        if not math.isfinite(margin) or y.size < 2 * self.min_points:
            return False
        steps = np.diff(y[:-k])
        noise = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / math.sqrt(2.0)
        above = (y[-k:] - best) / unit
        return bool(np.all(above > max(margin, 3.0 * noise / unit)))

    def _hidden_progress(self, start: int) -> bool:
        if not len(self._distance):
            return False
        d = self._distance.arrays()
        keep = d["x"] >= start
        if int(keep.sum()) < MIN_DISTANCE_POINTS:  # sparse samples: judge the latest motion
            keep = np.zeros_like(keep)
            keep[-MIN_DISTANCE_POINTS:] = True
        dx, dy = d["x"][keep], d["y"][keep]
        if dx.size < MIN_DISTANCE_POINTS or np.ptp(dx) <= 0:
            return False
        trend = robust_trend(dx, dy, self.z)
        if trend.low <= 0 < trend.high:
            return False
        # Motion relative to how far the weights had come, or to their own size when the
        # caller knows it: a creep at a tiny LR doubles a tiny distance without going anywhere.
        ref = max(
            abs(float(trend.fitted(dx[:1])[0])),
            self.distance_scale or 0.0,
            float(np.max(np.abs(dy))) * 1e-3,
            1e-12,
        )
        moved = abs(trend.slope) * float(np.ptp(dx)) / ref
        self._stats["distance_moved"] = moved
        return moved >= self.hidden_progress_growth

    def _kind(self, x: np.ndarray, y: np.ndarray, start: int) -> str:
        # How far the series had fallen from its start to the plateau's level. The level, not
        # the start step: a robust window may date a plateau from the very first point when a
        # fast initial drop is only a few of its bins.
        head = float(np.median(y[: min(4, y.size)]))
        on = y[x >= start]
        lowest = float(np.median(on)) if on.size else float(y[-1])
        before = y[x < start]
        if before.size:
            lowest = min(lowest, float(np.min(before)))
        fell = head - lowest
        if self.scale != "log":
            fell /= max(float(np.ptp(y)), abs(head), 1e-12)
        if fell < EARLY_DROP:
            return "early"
        if self._gradient_snr is not None:
            return "near_convergence" if self._gradient_snr < 1.0 else "mid"
        return "near_convergence" if fell >= NEAR_CONVERGENCE_DROP else "mid"

    def _close_plateau(self, step: int) -> None:
        current = self.current
        if current is not None:
            self.plateaus[-1] = dataclasses.replace(current, end=step)

    def _set_state(self, state: DetectorState, step: int) -> None:
        if state != DetectorState.PLATEAU and self.current is not None:
            self._close_plateau(step)
            if state != DetectorState.HIDDEN_PROGRESS:
                # The series moved on: the next plateau is judged on what comes after.
                # (A plateau that turned out to be hidden progress sets no boundary, so the
                # same flat stretch keeps being judged as one.)
                self._boundary = step
        self.state = state

    # -- reading ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Numbers behind the last decision (for the run store and the report)."""
        return dict(self._stats)

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Primitives only; a detector loaded from it continues exactly as this one."""
        return {
            "version": STATE_VERSION,
            "series": self.series,
            "mode": self.mode,
            "scale": self.scale,
            "bins": self._bins.state_dict(),
            "distance": self._distance.state_dict(),
            "state": self.state.value,
            "plateaus": [p.to_dict() for p in self.plateaus],
            "n_points": self.n_points,
            "n_nonfinite": self.n_nonfinite,
            "n_nonpositive": self.n_nonpositive,
            "nonfinite_run": self._nonfinite_run,
            "first_step": self._first_step,
            "last_step": self._last_step,
            "min_gap": self._min_gap if math.isfinite(self._min_gap) else None,
            "gradient_snr": self._gradient_snr,
            "boundary": self._boundary,
            "plateau_margin": self._plateau_margin,
            "rise_run": self._rise_run,
            "fast_run": self._fast_run,
            "stats": dict(self._stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"PlateauDetector.load_state_dict: version {state.get('version')!r} is not "
                f"{STATE_VERSION}; the state was saved by an incompatible unstuck"
            )
        self.mode = str(state["mode"])
        self.scale = str(state["scale"])
        self._bins.load_state_dict(state["bins"])
        self._distance.load_state_dict(state["distance"])
        self.state = DetectorState(str(state["state"]))
        self.plateaus = [Plateau.from_dict(p) for p in state["plateaus"]]
        self.n_points = int(state["n_points"])
        self.n_nonfinite = int(state["n_nonfinite"])
        self.n_nonpositive = int(state["n_nonpositive"])
        self._nonfinite_run = int(state["nonfinite_run"])
        self._first_step = state["first_step"]
        self._last_step = state["last_step"]
        gap = state["min_gap"]
        self._min_gap = math.inf if gap is None else float(gap)
        snr = state["gradient_snr"]
        self._gradient_snr = None if snr is None else float(snr)
        boundary = state.get("boundary")
        self._boundary = None if boundary is None else int(boundary)
        self._plateau_margin = float(state.get("plateau_margin", 0.0))
        self._rise_run = int(state.get("rise_run", 0))
        self._fast_run = int(state.get("fast_run", 0))
        self._stats = dict(state["stats"])


def detect_plateaus(
    steps: Sequence[int | float] | np.ndarray,
    values: Sequence[Any] | np.ndarray,
    *,
    series: str = "train",
    mode: str = "min",
    distance: tuple[Sequence[float], Sequence[float]] | None = None,
    **options: Any,
) -> tuple[list[Plateau], list[tuple[int, str]]]:
    """Run the streaming detector over a whole recorded series (offline logs).

    ``distance`` is an optional ``(steps, distances)`` pair for the hidden-progress check.
    Returns the plateaus and the state changes as ``(step, state)``.
    """
    detector = PlateauDetector(series, mode, **options)
    d_steps = np.asarray(distance[0], dtype=float) if distance is not None else np.zeros(0)
    d_vals = np.asarray(distance[1], dtype=float) if distance is not None else np.zeros(0)
    j = 0
    changes: list[tuple[int, str]] = []
    for s, v in zip(steps, values):
        dist = None
        while j < d_steps.size and d_steps[j] <= float(s):
            dist = d_vals[j]
            j += 1
        before = detector.state
        state = detector.update(s, v, distance=dist)
        if state != before:
            changes.append((int(float(s)), state))
    return detector.plateaus, changes
