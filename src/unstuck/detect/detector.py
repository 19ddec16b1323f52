"""``PlateauDetector``: a streaming, statistical answer to "has this series stopped improving?".

ReduceLROnPlateau asks "no new best in N checks?" — so noise triggers it early, a spike resets
it, and a slow descent looks like a stall. This detector instead asks a trend question of the
(log) series, with the noise measured from the data:

* **Progress is measured as a projection.** ``D = −slope · H``: how much the log loss would
  still fall if training ran as long again as it has (``H`` is the elapsed steps), from a
  Theil–Sen slope with Sen's confidence interval on bin means (``trend.py``, ``history.py``).
  ``D`` is scale-free in steps and loss: a power law ``t^−α`` has ``D = α`` at every length.
* **Plateau** = an equivalence test (TOST): the confidence interval of ``D`` lies inside
  ``(−epsilon, epsilon)`` (default 0.15: "running twice as long would change the loss by less
  than ~15 %", neither way) on some trailing window of at least ``2·min_points`` bins and 1/6
  of the run; the longest such window dates the start.
  Noise widens the interval, so a noisy series needs more evidence: windows adapt to the noise
  by construction, and to the logging cadence because they are fractions of the run.
* The plateau ends when the series falls again: a significant, meaningful decrease on the
  recent window, or the last bins all clearly below the plateau's level.
* **Hidden progress**: when the loss passes the plateau test but the parameter distance
  ``‖θ − θ₀‖`` has a significant trend that moved it by at least ``hidden_progress_growth``
  (relative) over the same window, the state is ``hidden_progress`` (wait; do not act).
  Without a distance signal (offline logs) this check is skipped and ``stats()`` says so.
* **Oscillating**: no meaningful progress and structured swings (spread above
  ``oscillation_sigma`` in log units with a lag-1 autocorrelation of magnitude above 0.3),
  between bins or inside them. **Diverging**: even the most favourable bound of the recent
  trend is a rise larger than ``epsilon``, or ``nonfinite_run`` non-finite values in a row.

docs/detection.md has the derivation, the defaults and how they were calibrated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from unstuck.detect.history import BinnedSeries
from unstuck.detect.trend import Trend, robust_trend, theil_sen_windows
from unstuck.types import Plateau

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_Z",
    "PlateauDetector",
    "detect_plateaus",
]

# Calibrated once on the generated curves of bench/detection.py (docs/detection.md):
DEFAULT_EPSILON = 0.15  # least projected log-decrease over the elapsed span that is progress
DEFAULT_Z = 1.96  # Sen interval level (two-sided 95 %) for every trend decision
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
        epsilon: the least projected improvement that counts as progress (see module doc).
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
        self.state = "unknown"
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
    ) -> str:
        """Add one point and return the state. Non-finite values are counted, never raised."""
        return self.update_many([step], [value], distance=distance, gradient_snr=gradient_snr)

    def update_many(
        self,
        steps: Sequence[int | float] | np.ndarray,
        values: Sequence[Any] | np.ndarray,
        *,
        distance: Any = None,
        gradient_snr: Any = None,
    ) -> str:
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
        if closed or self._nonfinite_run >= NONFINITE_RUN or self.state == "diverging":
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
            self._set_state("diverging", step)
            return
        bins = self._bins.arrays()
        x, y = bins["x"], bins["y"]
        if x.size < self.min_points or np.ptp(x) <= 0:
            self._set_state("unknown", step)
            return
        horizon = self._elapsed()
        if self.scale == "log":
            unit = 1.0
        else:
            unit = max(float(np.ptp(y)), abs(float(np.median(y))), 1e-12)

        def decrease(slope: float) -> float:
            return -slope * horizon / unit

        # The windows a plateau may be dated by: long enough to be more than a pause (a share of
        # the run and 2·min_points bins), and after the last plateau the series left.
        after = self._boundary
        longest_start = float(bins["last"][-1]) - MIN_PLATEAU_FRACTION * horizon
        eligible = []
        for n in self._window_sizes(int(x.size)):
            first_step = bins["first"][-n]
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
        trends = dict(zip(sizes, theil_sen_windows(x, y, sizes, self.z, bins["count"])))
        recent = trends[recent_n]
        rx, ry = x[-recent_n:], y[-recent_n:]
        resid = ry - recent.fitted(rx)
        # Bin means average white minibatch noise away; what is left around the trend is
        # structure: swings slower than a bin, i.e. oscillation.
        spread = float(np.std(resid)) / unit
        centred = resid - resid.mean()
        denom = float(np.dot(centred, centred))
        autocorr = float(np.dot(centred[1:], centred[:-1])) / denom if denom > 0 else 0.0
        # Swings faster than a bin average out of the bin means but not out of the bins: the
        # within-bin spread and lag-1 autocorrelation, less the part the trend explains.
        within, within_autocorr = self._within_bins(bins, recent_n, recent.slope, unit)
        level_now = float(recent.fitted(x[-1:])[0])
        best = float(np.min(y))
        stats: dict[str, Any] = {
            "points": self.n_points,
            "bins": int(x.size),
            "bin_width": self._bins.width,
            "horizon": horizon,
            "recent_window": recent_n,
            "recent_decrease": decrease(recent.slope),
            "recent_decrease_low": decrease(recent.high),
            "recent_decrease_high": decrease(recent.low),
            "spread": spread,
            "autocorr": autocorr,
            "within_spread": within,
            "within_autocorr": within_autocorr,
            "epsilon": self.epsilon,
            "nonfinite": self.n_nonfinite,
            "hidden_progress_check": "distance" if len(self._distance) else "unavailable",
        }
        self._stats = stats

        # Diverging: even the most favourable bound of the recent trend is a meaningful rise.
        # (On a validation series this is the curve pulling away from the training loss.)
        stats["above_best"] = (level_now - best) / unit
        if decrease(recent.low) < -self.epsilon:
            self._set_state("diverging", step)
            return

        # An open plateau holds until the series clearly falls again (hysteresis).
        current = self.current
        waiting = current is not None or self.state == "hidden_progress"
        if waiting and self._fell_again(x, y, recent, decrease, current):
            self._set_state("improving", step)
            return

        # Plateau test: the longest trailing window, after the last plateau, whose upper bound
        # on the projected decrease is below epsilon.
        passing: tuple[int, Trend] | None = None
        if self.distance_signal and len(self._distance) < MIN_DISTANCE_POINTS:
            eligible = []  # cannot tell a stall from hidden progress yet
        for n in eligible:
            # Equivalence, two-sided: the whole interval of D inside (−ε, ε). A window whose
            # interval allows a meaningful rise (a spike at its end) is not flat either.
            if decrease(trends[n].low) < self.epsilon and decrease(trends[n].high) > -self.epsilon:
                passing = (n, trends[n])
        structured_between = (
            spread > self.oscillation_sigma and abs(autocorr) > OSCILLATION_AUTOCORR
        )
        structured_within = (
            within > self.oscillation_sigma and abs(within_autocorr) > OSCILLATION_AUTOCORR
        )
        oscillating = (structured_between or structured_within) and decrease(
            recent.low
        ) < 2 * self.epsilon
        if oscillating and current is None:
            self._set_state("oscillating", step)
            return
        if passing is None and current is not None:
            self._set_state("plateau", step)  # grey zone: not flat enough to call, not falling
            return
        if passing is not None:
            n, trend = passing
            start = int(bins["first"][-n])
            stats["plateau_window"] = n
            stats["plateau_decrease_high"] = decrease(trend.low)
            se = max((trend.high - trend.low) * horizon / unit / (2 * self.z), 1e-12)
            confidence = 0.5 * (1 + math.erf((self.epsilon - decrease(trend.slope)) / se / 2**0.5))
            hidden = self._hidden_progress(start if current is None else current.start)
            if hidden:
                self._set_state("hidden_progress", step)
                return
            if current is None:
                kind = self._kind(x, y, start)
                self.plateaus.append(
                    Plateau(self.series, start, None, kind, round(confidence, 4), step)
                )
            self._set_state("plateau", step)
            return
        # Neither flat nor oscillating nor diverging: improving or slow.
        significant = decrease(recent.high) > 0
        if significant and decrease(recent.slope) >= 2 * self.epsilon:
            self._set_state("improving", step)
        else:
            self._set_state("slow", step)

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
        recent: Trend,
        decrease: Any,
        current: Plateau | None,
    ) -> bool:
        if decrease(recent.high) > self.epsilon:
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

    def _set_state(self, state: str, step: int) -> None:
        if state != "plateau" and self.current is not None:
            self._close_plateau(step)
            if state != "hidden_progress":
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
            "state": self.state,
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
        self.state = str(state["state"])
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
