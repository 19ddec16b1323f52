"""Is a short validation series rising? An exact rank test for 5 to 8 evaluations (not a rule:
the name starts with ``_``, so discovery skips it).

The validation detector needs ``min_points`` bins (8 by default) before it gives any verdict,
so a run evaluated a handful of times (the HF Trainer's few evals, one validation loss per
epoch) never shows it a rise. On so few points no slope and standard error are worth reading,
but the *order* of the values is: with no trend (the values exchangeable: noise around a level)
every ordering of n distinct values is equally likely, so a rank statistic has an exact null
distribution that can be enumerated (n! orderings, 40,320 at n = 8).

Two Mann–Kendall statistics (Mann 1945; Kendall 1975), S = Σ_{i<j} sign(x_j − x_i):

* over the whole series: a rise from the first evaluation on;
* over the evaluations after the best one (the lowest): a fall, then a rise. Given where the
  lowest value sits, the values after it are still exchangeable under no trend, so their S has
  the same exact distribution on fewer points. The best itself is left out: every later value
  is above it by construction, which says nothing about a trend.

Each gives an exact one-sided p-value; the test reads the smaller of the two, and its p-value is
the share of all n! orderings whose smaller p-value is as small (the min-p combination of
Westfall & Young 1993, calibrated exactly by enumeration): a false-positive rate of at most
``ALPHA`` on any noise without a trend, whatever the noise's distribution. Ties (a log's
rounding) count 0 in S, which can only raise the p-value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = ["ALPHA", "MAX_POINTS", "MIN_POINTS", "RiseTest", "mann_kendall_p", "rise_test"]

ALPHA = 0.05  # the conventional one-sided level: at most 1 flat series in 20 reads as rising
# With 4 points the smallest p-value there is, 1/24 ≈ 0.042, already passes ALPHA: a single
# ordering of four evaluations would be a finding. With 5 it is 1/120 ≈ 0.008.
MIN_POINTS = 5
# 8! = 40,320 orderings enumerated once per length (cached): at the default min_points = 8 the
# validation detector decides from there on.
MAX_POINTS = 8


def kendall_s(x: np.ndarray) -> int:
    """Mann–Kendall's S: concordant minus discordant pairs in time order (ties count 0)."""
    d = np.sign(x[None, :] - x[:, None])
    return int(np.triu(d, 1).sum())


@cache
def _mahonian(n: int) -> tuple[int, ...]:
    """How many orderings of n distinct values have k inversions, k = 0 … n(n−1)/2."""
    counts = [1]
    for size in range(2, n + 1):
        grown = [0] * (len(counts) + size - 1)
        for k, c in enumerate(counts):
            for j in range(size):
                grown[k + j] += c
        counts = grown
    return tuple(counts)


def mann_kendall_p(s: int, n: int) -> float:
    """Exact one-sided P(S ≥ s) for n exchangeable distinct values (1.0 for n < 2).

    S = N − 2·inversions with N = n(n−1)/2 pairs, so S ≥ s ⇔ inversions ≤ (N − s)/2.
    """
    if n < 2:
        return 1.0
    pairs = n * (n - 1) // 2
    most = math.floor((pairs - s) / 2 + 1e-9)
    if most < 0:
        return 0.0
    counts = _mahonian(n)
    return sum(counts[: most + 1]) / math.factorial(n)


def _two_s(x: np.ndarray) -> tuple[int, float, int, float]:
    """(S, p) over the whole series and (S, p) over the values after its best one."""
    s_whole = kendall_s(x)
    after = x[int(np.argmin(x)) + 1 :]
    s_after = kendall_s(after)
    return (
        s_whole,
        mann_kendall_p(s_whole, int(x.size)),
        s_after,
        mann_kendall_p(s_after, int(after.size)),
    )


@cache
def _null_min_p(n: int) -> np.ndarray:
    """The smaller of the two p-values over every ordering of n distinct values, sorted."""
    orders = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    signs = np.sign(orders[:, None, :] - orders[:, :, None]).astype(np.int8)  # [k, i, j]
    index = np.arange(n)
    upper = index[:, None] < index[None, :]
    best = orders.argmin(axis=1)
    after = (index[None, :] > best[:, None])[:, :, None] & (index[None, :] > best[:, None])[
        :, None, :
    ]
    s_whole = (signs * upper).sum(axis=(1, 2))
    s_after = (signs * (upper[None] & after)).sum(axis=(1, 2))
    whole_p = np.array([mann_kendall_p(s, n) for s in range(-n * n, n * n + 1)])
    after_p = {
        m: np.array([mann_kendall_p(s, m) for s in range(-n * n, n * n + 1)]) for m in range(n)
    }
    lengths = n - 1 - best
    p_after = np.empty(orders.shape[0])
    for m, table in after_p.items():
        sel = lengths == m
        p_after[sel] = table[s_after[sel] + n * n]
    out: np.ndarray = np.minimum(whole_p[s_whole + n * n], p_after)
    out.sort()
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class RiseTest:
    """The rank test's reading of one short series."""

    points: int
    s_whole: int
    p_whole: float
    s_after: int
    p_after: float
    p_value: float  # exact, of the smaller of p_whole and p_after

    @property
    def rising(self) -> bool:
        return self.p_value <= ALPHA


def rise_test(values: np.ndarray) -> RiseTest | None:
    """The exact test on the finite values of a series, or ``None`` outside 5 to 8 of them."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if not MIN_POINTS <= n <= MAX_POINTS:
        return None
    s_whole, p_whole, s_after, p_after = _two_s(x)
    observed = min(p_whole, p_after)
    null = _null_min_p(n)
    # the share of orderings at least as extreme (a relative tolerance for the float compare)
    p_value = int(np.searchsorted(null, observed * (1 + 1e-9), side="right")) / null.size
    return RiseTest(n, s_whole, p_whole, s_after, p_after, p_value)
