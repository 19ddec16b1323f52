"""The plateau rules people use, re-implemented in numpy-free python with the detector interface.

Every baseline has ``update(step, value, distance=None) -> state`` (``distance`` is ignored)
and ``plateaus``: a list of :class:`Event`, one per firing ("the LR would be cut here"). A
firing is a plateau *event*; the benchmark records the step of the ``update`` call at which it
appeared. ``state`` is ``"plateau"`` on the call that fired, ``"improving"`` when the value set
a new best (by the rule's own threshold) and ``"slow"`` otherwise; ``"unknown"`` before any
finite value.

Sources of the rules (facts from /work/shared/REFERENCE.md, section 1):

* ``RLROP`` — torch ``ReduceLROnPlateau`` (torch/optim/lr_scheduler.py, torch 2.13 defaults:
  mode="min", threshold=1e-4, threshold_mode="rel", patience=10, cooldown=0): a value is better
  when ``value < best * (1 - threshold)``; otherwise ``num_bad_epochs += 1`` (a NaN is bad);
  it fires when ``num_bad_epochs > patience``, then resets ``num_bad_epochs`` (and starts the
  cooldown); ``best`` is *not* reset. Fed every logged step ("rlrop_every_step") or 50-step
  means ("rlrop_mean50", :class:`Mean50`).
* ``KerasRLROP`` — Keras 3 ``ReduceLROnPlateau`` (keras/src/callbacks/reduce_lr_on_plateau.py,
  defaults min_delta=1e-4 *absolute*, patience=10, cooldown=0): better when
  ``value < best - min_delta``; otherwise ``wait += 1``; fires when ``wait >= patience``, then
  ``wait = 0``.
* ``FastaiRLROP`` — fastai ``ReduceLROnPlateau`` (fastai/callback/tracker.py, a
  ``TrackerCallback`` with ``comp=np.less``, defaults min_delta=0.0, patience=1, factor=10.0):
  better when ``value - min_delta < best`` (min_delta is negated for ``np.less``, so with the
  default 0 it is ``value < best``); otherwise ``wait += 1``; fires when ``wait >= patience``,
  then ``wait = 0``. fastai calls it once per epoch; here once per logged point.
* ``EmaSlope`` — the hand-rolled rule seen in many training scripts: an EMA of the loss
  (β = 0.98, bias-corrected); the least-squares slope of the EMA over the last 100 logged
  points, divided by the EMA level, is compared with 1e-4 per step: ``|slope| / level < 1e-4``
  fires; the rule then re-arms only after another 100 points. Non-finite values are skipped.
* ``DlibRobust`` — dlib ``dnn_trainer``'s progress test (dlib/statistics/running_gradient.h,
  ``count_steps_without_decrease_robust`` and ``count_steps_without_decrease``, defaults
  ``probability_of_decrease=0.51``, ``quantile_discard=0.10``): walking back from the newest
  value, the values are added to a ``running_gradient`` (least-squares slope against the order
  of addition, standard error ``sqrt(RSS/(n-2) · 12/(n³-n))``, P(decrease) from the normal CDF);
  the count is the longest trailing run whose P(decrease) < 0.51; the robust one first drops
  values above the upper 10 % quantile. The trainer cuts the LR when both counts reach
  ``iterations_without_progress_threshold`` (2000 for the training loss, 500 for the test loss
  in dlib's trainer) and then clears the history; a firing here is that cut. It keeps at most
  2× the threshold of history (its count cannot exceed the history) and, for speed, tests
  every ``threshold // 100`` values (a firing is late by at most 1 % of the threshold).
* ``RayPlateau`` — Ray Tune ``TrialPlateauStopper`` (ray/tune/stopper/trial_plateau.py, defaults
  ``std=0.01``, ``num_results=4``, ``grace_period=4``, ``metric_threshold=None``): fires when the
  standard deviation (numpy's, ddof 0) of the last 4 results is below 0.01 (absolute) after at
  least 4 results. Ray stops the trial there; here the rule re-arms after 4 more results.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass
class Event:
    """A firing of a baseline rule: same fields as ``unstuck.types.Plateau``."""

    series: str
    start: int
    end: int | None = None
    kind: str = "mid"
    confidence: float = 1.0
    detected_at: int | None = None


def _finite(value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return v


class _Rule:
    """Shared bookkeeping: ``last_best_step`` is the start reported on an event."""

    def __init__(self, series: str = "train", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.series = series
        self.mode = mode
        self.plateaus: list[Event] = []
        self.state = "unknown"
        self.last_best_step: int | None = None
        self._sign = 1.0 if mode == "min" else -1.0

    def update(self, step: int, value: object, distance: object = None) -> str:
        raise NotImplementedError

    def _fire(self, step: int) -> None:
        start = self.last_best_step if self.last_best_step is not None else step
        self.plateaus.append(Event(self.series, int(start), None, detected_at=int(step)))


class RLROP(_Rule):
    """torch.optim.lr_scheduler.ReduceLROnPlateau's decision rule (threshold_mode="rel")."""

    def __init__(
        self,
        series: str = "train",
        mode: str = "min",
        *,
        patience: int = 10,
        threshold: float = 1e-4,
        cooldown: int = 0,
    ) -> None:
        super().__init__(series, mode)
        self.patience = patience
        self.threshold = threshold
        self.cooldown = cooldown
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < best * (1.0 - self.threshold)
        return a > best * (1.0 + self.threshold)

    def update(self, step: int, value: object, distance: object = None) -> str:
        current = _finite(value)
        if self._better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
            self.last_best_step = int(step)
            self.state = "improving"
        else:
            self.num_bad_epochs += 1
            self.state = "slow" if self.last_best_step is not None else "unknown"
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            self._fire(step)
            self.state = "plateau"
        return self.state


class KerasRLROP(_Rule):
    """keras.callbacks.ReduceLROnPlateau's decision rule (absolute min_delta, wait >= patience)."""

    def __init__(
        self,
        series: str = "train",
        mode: str = "min",
        *,
        patience: int = 10,
        min_delta: float = 1e-4,
        cooldown: int = 0,
    ) -> None:
        super().__init__(series, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.cooldown = cooldown
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < best - self.min_delta
        return a > best + self.min_delta

    def update(self, step: int, value: object, distance: object = None) -> str:
        current = _finite(value)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current, self.best):
            self.best = current
            self.wait = 0
            self.last_best_step = int(step)
            self.state = "improving"
        elif self.cooldown_counter <= 0:  # Keras re-checks in_cooldown() after the decrement
            self.wait += 1
            self.state = "slow" if self.last_best_step is not None else "unknown"
            if self.wait >= self.patience:
                self.cooldown_counter = self.cooldown
                self.wait = 0
                self._fire(step)
                self.state = "plateau"
        return self.state


class FastaiRLROP(_Rule):
    """fastai.callback.tracker.ReduceLROnPlateau's rule (min_delta=0, patience=1, wait >= p)."""

    def __init__(
        self, series: str = "train", mode: str = "min", *, patience: int = 1, min_delta: float = 0.0
    ) -> None:
        super().__init__(series, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0

    def update(self, step: int, value: object, distance: object = None) -> str:
        current = _finite(value)
        if self.mode == "min":
            new_best = current + self.min_delta < self.best
        else:
            new_best = current - self.min_delta > self.best
        if new_best:
            self.best = current
            self.wait = 0
            self.last_best_step = int(step)
            self.state = "improving"
            return self.state
        self.wait += 1
        self.state = "slow" if self.last_best_step is not None else "unknown"
        if self.wait >= self.patience:
            self.wait = 0
            self._fire(step)
            self.state = "plateau"
        return self.state


class Mean50:
    """Feed a rule with means over groups of 50 *steps* (``step // 50``), as users do when they
    step ReduceLROnPlateau on a running mean. A group is closed by the first point of the next
    group, so its mean is fed at that call. When points are logged every ≥ 50 steps, raw points
    are fed directly. A non-finite value makes the group's mean NaN (a bad point for RLROP)."""

    def __init__(self, rule: _Rule, group: int = 50) -> None:
        self.rule = rule
        self.group = group
        self._key: int | None = None
        self._sum = 0.0
        self._n = 0
        self._prev: int | None = None
        self.state = "unknown"

    @property
    def plateaus(self) -> list[Event]:
        return self.rule.plateaus

    def update(self, step: int, value: object, distance: object = None) -> str:
        v = _finite(value)
        raw = self._prev is not None and step - self._prev >= self.group
        self._prev = int(step)
        if raw:
            if self._n:
                self.state = self.rule.update(step, self._sum / self._n)
                self._n, self._sum, self._key = 0, 0.0, None
            self.state = self.rule.update(step, v)
            return self.state
        key = int(step) // self.group
        if self._key is not None and key != self._key and self._n:
            self.state = self.rule.update(step, self._sum / self._n)
            self._n, self._sum = 0, 0.0
        self._key = key
        self._sum += v
        self._n += 1
        return self.state


class EmaSlope(_Rule):
    """Relative slope of an EMA of the loss over the last ``window`` logged points."""

    def __init__(
        self,
        series: str = "train",
        mode: str = "min",
        *,
        beta: float = 0.98,
        window: int = 100,
        threshold: float = 1e-4,
    ) -> None:
        super().__init__(series, mode)
        self.beta = beta
        self.window = window
        self.threshold = threshold
        self._ema = 0.0
        self._n = 0
        self._pts: deque[tuple[float, float]] = deque(maxlen=window)
        self._since_fire = window  # points since the last firing; armed when >= window
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def slope(self) -> float:
        """Least-squares slope of the EMA against the step over the window (running sums)."""
        n = len(self._pts)
        sxx = self._sxx - self._sx * self._sx / n
        sxy = self._sxy - self._sx * self._sy / n
        return sxy / sxx if sxx > 0 else 0.0

    def _push(self, x: float, y: float) -> None:
        if len(self._pts) == self.window:
            ox, oy = self._pts[0]
            self._sx -= ox
            self._sy -= oy
            self._sxx -= ox * ox
            self._sxy -= ox * oy
        self._pts.append((x, y))
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._sxy += x * y

    def update(self, step: int, value: object, distance: object = None) -> str:
        v = _finite(value)
        if not math.isfinite(v):
            return self.state
        self._n += 1
        self._ema = self.beta * self._ema + (1.0 - self.beta) * v
        level = self._ema / (1.0 - self.beta**self._n)
        self._push(float(step), level)
        self._since_fire += 1
        if len(self._pts) < self.window:
            self.state = "unknown"
            return self.state
        slope = self.slope()
        rel = abs(slope) / max(abs(level), 1e-12)
        if rel < self.threshold and self._since_fire >= self.window:
            self._since_fire = 0
            self.last_best_step = int(self._pts[0][0])
            self._fire(step)
            self.state = "plateau"
        else:
            going_down = slope * self._sign < 0
            self.state = "improving" if going_down and rel >= self.threshold else "slow"
        return self.state


class DlibRobust(_Rule):
    """dlib's dnn_trainer progress test: both step counts reach the threshold (module doc)."""

    def __init__(
        self,
        series: str = "train",
        mode: str = "min",
        *,
        threshold: int | None = None,
        probability_of_decrease: float = 0.51,
        quantile_discard: float = 0.10,
    ) -> None:
        super().__init__(series, mode)
        # dlib's trainer: 2000 steps on the training loss, 500 on the test loss.
        self.threshold = threshold or (2000 if series == "train" else 500)
        self.p = probability_of_decrease
        self.discard = quantile_discard
        self._hist: deque[float] = deque(maxlen=2 * self.threshold)
        self._steps: deque[int] = deque(maxlen=2 * self.threshold)
        self._since_test = 0

    @staticmethod
    def count(values: np.ndarray, p: float) -> int:
        """``count_steps_without_decrease``: values newest first, vectorised over every ``j``."""
        n = values.size
        if n < 3:
            return n
        i = np.arange(n, dtype=float)
        k = i + 1.0  # points in the regression ending at index i
        sx, sy = np.cumsum(i), np.cumsum(values)
        sxx, sxy, syy = np.cumsum(i * i), np.cumsum(i * values), np.cumsum(values * values)
        vxx = sxx - sx * sx / k
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (sxy - sx * sy / k) / vxx
            rss = np.maximum(syy - sy * sy / k - slope * (sxy - sx * sy / k), 0.0)
            se = np.sqrt(rss / (k - 2) * 12.0 / (k**3 - k))
            # values go newest first, so a positive slope here is a decrease in time;
            # P(decrease) = Φ(slope/se) < p  ⇔  slope/se < Φ⁻¹(p) (no erf per point)
            z = slope / se
        z = np.where(se > 0, z, np.where(slope > 0, np.inf, -np.inf))
        bad = np.nonzero((k > 2) & (z < NormalDist().inv_cdf(p)))[0]
        return int(bad[-1]) + 1 if bad.size else 0

    def count_robust(self, values: np.ndarray) -> int:
        """``count_steps_without_decrease_robust``: values above the upper quantile skipped; the
        count is still in positions of the original sequence."""
        if values.size == 0:
            return 0
        thresh = float(np.quantile(values, 1.0 - self.discard))
        keep = values <= thresh
        kept = values[keep]
        c = self.count(kept, self.p)
        if c == 0:
            return 0
        positions = np.nonzero(keep)[0]
        # dlib counts j over the original positions: the last kept value counted maps back
        return int(positions[min(c, positions.size) - 1]) + 1

    def update(self, step: int, value: object, distance: object = None) -> str:
        v = _finite(value)
        if not math.isfinite(v):
            return self.state
        self._hist.append(v * self._sign)
        self._steps.append(int(step))
        self.state = "slow"
        self._since_test += 1
        if len(self._hist) < self.threshold or self._since_test < max(self.threshold // 100, 1):
            return self.state
        self._since_test = 0
        newest_first = np.asarray(self._hist, dtype=float)[::-1]
        if self.count(newest_first, self.p) >= self.threshold and (
            self.count_robust(newest_first) >= self.threshold
        ):
            self.last_best_step = self._steps[-self.threshold]
            self._fire(step)
            self.state = "plateau"
            self._hist.clear()
            self._steps.clear()
        return self.state


class RayPlateau(_Rule):
    """Ray Tune TrialPlateauStopper: std of the last 4 results < 0.01 (absolute)."""

    def __init__(
        self,
        series: str = "train",
        mode: str = "min",
        *,
        std: float = 0.01,
        num_results: int = 4,
        grace_period: int = 4,
    ) -> None:
        super().__init__(series, mode)
        self.std = std
        self.num_results = num_results
        self.grace_period = grace_period
        self._last: deque[tuple[int, float]] = deque(maxlen=num_results)
        self._n = 0
        self._since_fire = num_results

    def update(self, step: int, value: object, distance: object = None) -> str:
        v = _finite(value)
        self._n += 1
        self._since_fire += 1
        self._last.append((int(step), v))
        self.state = "slow"
        if self._n < self.grace_period or len(self._last) < self.num_results:
            return self.state
        vals = [x for _, x in self._last]
        armed = all(math.isfinite(x) for x in vals) and self._since_fire >= self.num_results
        if armed and float(np.std(vals)) < self.std:
            self.last_best_step = self._last[0][0]
            self._fire(step)
            self._since_fire = 0
            self.state = "plateau"
        return self.state


def make_baselines(series: str = "train", mode: str = "min") -> dict[str, object]:
    """Fresh instances of every baseline, by benchmark name."""
    return {
        "rlrop_every_step": RLROP(series, mode),
        "rlrop_mean50": Mean50(RLROP(series, mode)),
        "keras": KerasRLROP(series, mode),
        "fastai": FastaiRLROP(series, mode),
        "ema_slope": EmaSlope(series, mode),
        "dlib_robust": DlibRobust(series, mode),
        "ray_plateau": RayPlateau(series, mode),
    }


BASELINE_NAMES = (
    "rlrop_every_step",
    "rlrop_mean50",
    "keras",
    "fastai",
    "ema_slope",
    "dlib_robust",
    "ray_plateau",
)
