"""Did an action help? The loss after it against where the loss before it was heading.

The *before* window is summarised by the detector's own trend test (Theil–Sen on batch means
with Sen's interval, :mod:`unstuck.detect.trend`): its level and slope project where the run
would have been without the action. The *after* window (the second half of the horizon) is
summarised by its mean and a batch-means standard error (8 blocks, the estimator SASA uses,
Lang et al. 2019), because consecutive minibatch losses are autocorrelated. An action is

* **worse** when the loss after it is above the old level by more than ``Z_WORSE`` standard
  errors ("higher than before"), or when it *stalled a descent*: the old trend was a
  significant descent, the loss after is above that descent's projection by as much, and the
  loss after has itself stopped falling (its own trend's interval is not below zero) — an LR
  cut that freezes a real descent is rolled back; one after which the loss keeps falling is
  not, however steep the early descent projected ahead was;
* **better** when it is below the old level by as much and did not stall a descent. (A
  projection is not asked to be beaten: the descent before an early action is often the fast
  first drop of training, and no run keeps that pace.)

An action taken on a *rising* loss (the old trend's whole interval above zero: a spike, a
divergence) is judged against the level at the action, the mean of the last of the window's
``N_BLOCKS`` blocks, not against the window's mean: that mean still holds the good stretch
before the rise, and an action that stopped the rise would read as worse than it.

A verdict with an infinite standard error (fewer than two points on a side) cannot decide; the
engine keeps nothing on it.

The projection's error grows with the distance it extrapolates (the slope's interval times the
gap), so a far-fetched projection never condemns an action on its own. The comparison is on log
loss when every value is positive, so it reads as a relative change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unstuck.detect.detector import DEFAULT_Z
from unstuck.detect.trend import coarsen, robust_trend

__all__ = ["Verdict", "compare_windows", "judge"]

N_BLOCKS = 8  # batch means: enough blocks for a usable variance, long enough blocks to decorrelate
Z_WORSE = 2.0  # ≈ one-sided 97.7 %: roll back only when "worse" is clear of the noise
TREND_POINTS = 16  # batch means the pre-action trend is fitted on (the detector's 2·min_points)


@dataclass(frozen=True)
class Verdict:
    worse: bool
    better: bool
    change: float  # after − before level, in log units when ``log`` else raw
    stderr: float
    log: bool
    projected_change: float = 0.0  # after − the old trend's projection (same units)
    projected_stderr: float = math.inf
    rising: bool = False  # the loss rose before the action: judged against its level there


def _block_mean_stats(values: np.ndarray) -> tuple[float, float]:
    n_blocks = min(N_BLOCKS, values.size)
    blocks = np.array_split(values, n_blocks)
    means = np.array([b.mean() for b in blocks])
    se = float(means.std(ddof=1) / math.sqrt(n_blocks)) if n_blocks > 1 else float("inf")
    return float(means.mean()), se


def compare_windows(before: np.ndarray, after: np.ndarray) -> Verdict:
    """Compare the levels of two loss windows (no trend): used where steps are not known."""
    n_before = np.asarray(before, dtype=np.float64).size
    n_after = np.asarray(after, dtype=np.float64).size
    return judge(
        np.arange(n_before, dtype=np.float64),
        before,
        np.arange(n_before, n_before + n_after, dtype=np.float64),
        after,
        use_trend=False,
    )


def judge(
    before_steps: np.ndarray,
    before: np.ndarray,
    after_steps: np.ndarray,
    after: np.ndarray,
    *,
    use_trend: bool = True,
) -> Verdict:
    """The verdict on an action from the loss before it and the loss after its transient."""
    xb = np.asarray(before_steps, dtype=np.float64)
    yb = np.asarray(before, dtype=np.float64)
    xa = np.asarray(after_steps, dtype=np.float64)
    ya = np.asarray(after, dtype=np.float64)
    if ya.size == 0 or not np.all(np.isfinite(ya)):
        return Verdict(worse=True, better=False, change=math.inf, stderr=0.0, log=False)
    ok = np.isfinite(yb)
    xb, yb = xb[ok], yb[ok]
    if yb.size < 2:
        return Verdict(worse=False, better=False, change=0.0, stderr=math.inf, log=False)
    use_log = bool(np.all(yb > 0) and np.all(ya > 0))
    if use_log:
        yb, ya = np.log(yb), np.log(ya)
    m0, s0 = _block_mean_stats(yb)
    m1, s1 = _block_mean_stats(ya)
    se = math.sqrt(s0**2 + s1**2)
    change = m1 - m0
    worse = change > Z_WORSE * se
    better = change < -Z_WORSE * se
    projected_change, projected_se = change, se
    rising = False
    if use_trend and yb.size >= 3:
        bx, by = coarsen(xb, yb, np.ones_like(xb), TREND_POINTS)
        trend = robust_trend(bx, by, DEFAULT_Z)
        rising = math.isfinite(trend.low) and trend.low > 0
        if rising:
            # Against the level at the action: the last block of the window.
            m0 = float(np.array_split(yb, min(N_BLOCKS, yb.size))[-1].mean())
            change = m1 - m0
            worse = change > Z_WORSE * se
            better = change < -Z_WORSE * se
            projected_change = change
        if math.isfinite(trend.low) and math.isfinite(trend.high) and not rising:
            gap = float(xa.mean()) - trend.x_mean
            slope_se = (trend.high - trend.low) / (2.0 * DEFAULT_Z)
            projection = trend.intercept + trend.slope * gap
            projected_change = m1 - projection
            projected_se = math.sqrt(s0**2 + s1**2 + (gap * slope_se) ** 2)
            # "Slower than the descent it interrupted": the old trend fell, the loss after is
            # above its projection, and the loss after has itself stopped falling. A descent
            # that goes on after the action was not stalled by it, however steep the early
            # descent projected ahead was (a cut after a fast first drop).
            ax, ay = coarsen(xa, ya, np.ones_like(xa), TREND_POINTS)
            after_trend = robust_trend(ax, ay, DEFAULT_Z) if ay.size >= 3 else None
            still_falling = after_trend is not None and after_trend.high < 0
            slowed = (
                trend.high < 0 and projected_change > Z_WORSE * projected_se and not still_falling
            )
            worse = worse or slowed
            better = better and not slowed
    return Verdict(
        worse=bool(worse),
        better=bool(better),
        change=float(change),
        stderr=float(se),
        log=use_log,
        projected_change=float(projected_change),
        projected_stderr=float(projected_se),
        rising=rising,
    )
