"""Numeric helpers for the report's charts: downsampling, smoothing, step functions.

Everything here takes and returns numpy arrays of (step, value) points; nothing is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "MAX_POINTS",
    "SMALL_MAX_POINTS",
    "as_numbers",
    "downsample",
    "forward_fill",
    "hold_to",
    "move_changes",
    "plot_xy",
    "positive",
    "smooth",
    "smoothing_span",
    "start_at",
]

# A plotted series longer than this is downsampled to the min and max of MAX_POINTS // 2 buckets:
# a full-width chart is about 1,000 px wide, so that is one bucket per pixel.
MAX_POINTS = 2000
SMALL_MAX_POINTS = 600  # the same for the half-width charts of "Other signals"
# A shorter series is drawn as it is, with no smoothed line over it: an epoch log's means are
# smooth already, and a window of a few epochs would only blur its turns.
SMOOTH_MIN_POINTS = 100
SMOOTH_SHARE = 0.02  # the smoothing window as a share of the series' points ...
SMOOTH_SPAN = (5, 501)  # ... kept within these bounds


def downsample(
    steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points: the min and the max of each of ``max_points // 2``
    buckets (so spikes and dips survive), the first and last point, and the first non-finite
    point of a bucket (so a NaN still shows as a gap)."""
    n = int(steps.size)
    if n <= max_points:
        return steps, values
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf)
    high = np.where(finite, values, -np.inf)
    edges = np.linspace(0, n, max_points // 2 + 1).astype(np.int64)
    keep = [0, n - 1]
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if b <= a:
            continue
        seg = finite[a:b]
        if seg.any():
            keep += [a + int(np.argmin(low[a:b])), a + int(np.argmax(high[a:b]))]
        if not seg.all():
            keep.append(a + int(np.argmin(seg)))
    index = np.unique(np.asarray(keep, dtype=np.int64))
    return steps[index], values[index]


def plot_xy(
    steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Downsampled, as float64, with non-finite values as NaN (a gap in the line)."""
    s, v = downsample(steps, values, max_points)
    return s.astype(np.float64), np.where(np.isfinite(v), v, np.nan).astype(np.float64)


def positive(values: Iterable[np.ndarray]) -> bool:
    """True when every finite value is > 0 and there is at least one: a log axis fits."""
    seen = False
    for v in values:
        f = v[np.isfinite(v)]
        if f.size:
            seen = True
            if (f <= 0).any():
                return False
    return seen


def as_numbers(value: Any) -> np.ndarray | None:
    """A list of plain numbers (not bools) as float64, or None."""
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return None
    return np.asarray(value, dtype=np.float64)


def forward_fill(steps: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The step function ``values`` (held until the next point) read at ``at``; NaN before."""
    index = np.searchsorted(steps, at, side="right") - 1
    out = np.full(at.shape, np.nan)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


def hold_to(steps: np.ndarray, values: np.ndarray, last: int) -> tuple[np.ndarray, np.ndarray]:
    """A series logged when it changes, held at its last value until ``last``."""
    if steps.size and last > int(steps[-1]):
        return np.append(steps, last), np.append(values, values[-1])
    return steps, values


def start_at(steps: np.ndarray, values: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """A series logged from its first flush on, drawn back to ``first`` at its first value
    (the Guard's multiplier is 1 from the start; it is first logged at the first flush)."""
    if steps.size and first < int(steps[0]):
        return np.insert(steps, 0, first), np.insert(values, 0, values[0])
    return steps, values


def move_changes(
    steps: np.ndarray, values: np.ndarray, at: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    """A sampled step function whose changes happened at known steps ``at``.

    A value the Guard logs once per flush (``lr_multiplier``) shows an action's change at the
    next flush, up to a flush interval after the action. Where the value changes between two
    points and a step of ``at`` lies in ``[previous point, next point)``, the new value is
    placed at that step (the last such one), so the line jumps where the action table says.
    """
    marks = np.unique(np.asarray(list(at), dtype=np.int64))
    if steps.size < 2 or not marks.size:
        return steps, values
    out_s, out_v = [int(steps[0])], [float(values[0])]
    for i in range(1, int(steps.size)):
        prev, cur = int(steps[i - 1]), int(steps[i])
        if values[i] != values[i - 1]:
            inside = marks[(marks >= prev) & (marks < cur)]
            if inside.size:
                out_s.append(int(inside[-1]))
                out_v.append(float(values[i]))
        out_s.append(cur)
        out_v.append(float(values[i]))
    return np.asarray(out_s, dtype=np.int64), np.asarray(out_v, dtype=np.float64)


def smoothing_span(n: int) -> int:
    """The (odd) smoothing window for a series of ``n`` points; 0 when it is too short."""
    if n < SMOOTH_MIN_POINTS:
        return 0
    return int(min(max(round(n * SMOOTH_SHARE), SMOOTH_SPAN[0]), SMOOTH_SPAN[1])) | 1


def smooth(values: np.ndarray, window: int, log: bool = False) -> np.ndarray:
    """A centred moving average over ``window`` points (fewer at the ends), so the smoothed
    line does not lag behind a drop as a running average would; of ``log(values)`` when
    ``log`` (the geometric mean: it sits in the middle of the noise on a log axis).
    Non-finite values are left out of the averages and stay gaps."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & ((v > 0) if log else True)
    safe = np.where(ok, v, 1.0 if log else 0.0)
    t = np.where(ok, np.log(safe) if log else safe, 0.0)
    csum = np.concatenate([[0.0], np.cumsum(t)])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    n = v.size
    half = window // 2
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (csum[hi] - csum[lo]) / count
    out = np.exp(mean) if log else mean
    return np.where(ok, out, np.nan)
