"""Robust trend estimates with confidence intervals, in pure numpy.

The detector asks one question of a stretch of (log) loss: *how fast is it still falling, and
how sure are we?* The Theil–Sen estimator answers the first (median of all pairwise slopes; a
spike moves it only if it covers ~29 % of the points, Sen 1968), and Sen's rank-based interval
the second: the order statistics of the sorted pairwise slopes at ``(N ∓ C)/2`` with
``C = z·sqrt(n(n−1)(2n+5)/18)`` bound the true slope at the level of ``z`` when the residuals
are independent. The detector feeds it batch means (bins of consecutive points), which is what
makes the residuals close to independent on minibatch losses (the batch-means idea of SASA,
Lang et al. 2019).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Trend",
    "coarsen",
    "robust_trend",
    "theil_sen",
    "theil_sen_windows",
]


@dataclass(frozen=True)
class Trend:
    """Slope of a stretch with its confidence interval (units of y per step)."""

    slope: float
    low: float
    high: float
    n: int
    intercept: float  # y at x = x_mean, so ``intercept + slope·(x − x_mean)`` is the fit
    x_mean: float

    def fitted(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * (np.asarray(x, dtype=float) - self.x_mean)


@functools.lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` of ``n`` points (cached: the detector asks for the same sizes)."""
    return np.triu_indices(n, k=1)


def _interval(slopes: np.ndarray, n: int, z: float) -> tuple[float, float, float]:
    """Median and Sen's confidence bounds from an unsorted 1-D array of pairwise slopes."""
    count = slopes.size
    c = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    lo_rank = math.floor((count - c) / 2.0)
    hi_rank = math.ceil((count + c) / 2.0)
    lo_rank = min(max(lo_rank, 0), count - 1)
    hi_rank = min(max(hi_rank, 0), count - 1)
    mid_lo, mid_hi = (count - 1) // 2, count // 2
    kth = sorted({lo_rank, hi_rank, mid_lo, mid_hi})
    part = np.partition(slopes, kth)
    median = 0.5 * (float(part[mid_lo]) + float(part[mid_hi]))
    return median, float(part[lo_rank]), float(part[hi_rank])


def theil_sen(x: np.ndarray, y: np.ndarray, z: float = 1.96) -> Trend:
    """Theil–Sen slope of ``y`` against ``x`` with Sen's interval at the level of ``z``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    if n < 3:
        raise ValueError(f"theil_sen needs at least 3 points, got {n}")
    i, j = _pairs(n)
    dx = x[j] - x[i]
    keep = dx != 0
    slopes = (y[j] - y[i])[keep] / dx[keep]
    slopes = slopes[np.isfinite(slopes)]
    if slopes.size == 0:
        raise ValueError("theil_sen needs at least two distinct x values")
    median, low, high = _interval(slopes, n, z)
    x_mean = float(x.mean())
    intercept = float(np.median(y - median * (x - x_mean)))
    return Trend(median, low, high, n, intercept, x_mean)


def coarsen(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge consecutive points into at most ``points`` weighted means (coarser batch means)."""
    if x.size <= points:
        return x, y
    starts = np.linspace(0, x.size, points + 1).astype(int)[:-1]
    w = np.add.reduceat(weight, starts)
    return np.add.reduceat(x * weight, starts) / w, np.add.reduceat(y * weight, starts) / w


def theil_sen_windows(
    x: np.ndarray,
    y: np.ndarray,
    sizes: list[int],
    z: float,
    weight: np.ndarray | None = None,
    max_points: int = 48,
) -> list[Trend]:
    """Theil–Sen trends of the last ``n`` points for each ``n`` in ``sizes``.

    A window longer than ``max_points`` is first coarsened into ``max_points`` weighted batch
    means, which bounds the cost (the pairwise slopes grow with the square of the points) and
    keeps the residuals of long windows close to independent.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(x) if weight is None else np.asarray(weight, dtype=float)
    trends = []
    for n in sizes:
        wx, wy = coarsen(x[-n:], y[-n:], w[-n:], max_points)
        trends.append(robust_trend(wx, wy, z))
    return trends


def robust_trend(x: np.ndarray, y: np.ndarray, z: float) -> Trend:
    """:func:`theil_sen`, or an uninformative trend (slope 0, interval ±inf) where the data
    cannot give one (repeated steps, non-finite values): a detector must decide, not raise."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    try:
        return theil_sen(x[ok], y[ok], z)
    except ValueError:
        x_mean = float(x[ok].mean()) if ok.any() else 0.0
        y_mean = float(y[ok].mean()) if ok.any() else 0.0
        return Trend(0.0, -math.inf, math.inf, int(ok.sum()), y_mean, x_mean)
