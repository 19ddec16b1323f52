"""Did an action help? A two-sample test on block means of the loss before and after it.

Losses within a window are autocorrelated, so the standard error comes from block means (the
batch-means estimator SASA uses, Lang et al. 2019) rather than from raw points. The comparison
is on log loss when every value is positive, so it reads as a relative change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Verdict", "compare_windows"]

N_BLOCKS = 8  # batch means: enough blocks for a usable variance, long enough blocks to decorrelate
Z_WORSE = 2.0  # ≈ one-sided 97.7 %: roll back only when "worse" is clear of the noise


@dataclass(frozen=True)
class Verdict:
    worse: bool
    better: bool
    change: float  # post − pre, in log units when ``log`` else raw
    stderr: float
    log: bool


def _block_mean_stats(values: np.ndarray) -> tuple[float, float]:
    n_blocks = min(N_BLOCKS, values.size)
    blocks = np.array_split(values, n_blocks)
    means = np.array([b.mean() for b in blocks])
    se = float(means.std(ddof=1) / math.sqrt(n_blocks)) if n_blocks > 1 else float("inf")
    return float(means.mean()), se


def compare_windows(before: np.ndarray, after: np.ndarray) -> Verdict:
    """Compare the loss after an action with the loss before it."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    if after.size == 0 or not np.all(np.isfinite(after)):
        return Verdict(worse=True, better=False, change=float("inf"), stderr=0.0, log=False)
    before = before[np.isfinite(before)]
    if before.size < 2:
        return Verdict(worse=False, better=False, change=0.0, stderr=float("inf"), log=False)
    use_log = bool(np.all(before > 0) and np.all(after > 0))
    if use_log:
        before, after = np.log(before), np.log(after)
    m0, s0 = _block_mean_stats(before)
    m1, s1 = _block_mean_stats(after)
    se = math.sqrt(s0**2 + s1**2)
    change = m1 - m0
    return Verdict(
        worse=change > Z_WORSE * se,
        better=change < -Z_WORSE * se,
        change=change,
        stderr=se,
        log=use_log,
    )
