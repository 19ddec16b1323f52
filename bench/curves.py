"""Labeled synthetic loss curves for the plateau-detection benchmark.

``generate_curves(seed)`` returns at least 200 curves from eleven families (ten shapes; the
grokking family yields a train and a val curve per run). Everything is deterministic from the
seed: curve ``i`` of family ``f`` draws from ``numpy.random.default_rng([seed, f, i, attempt])``.

Label rule (one rule for every curve, applied to the noise-free curve)
--------------------------------------------------------------------
Let ``y = ln(clean loss)`` at the logged steps and ``dt`` the median logging interval.
A window ``[s, e]`` of logged steps is *flat* when ``max(y) - min(y) <= 0.01`` over it
(a 1 % band) and *long* when ``e - s >= max(0.2 * s, 8 * dt)``. For every start ``s`` take the
longest flat window beginning there; keep the long ones; a labeled plateau is a connected
component (union of overlapping windows) of those kept windows. The intervals are therefore
maximal. A curve with no labeled interval is a no-plateau curve. Non-finite clean values (a
divergence ending in overflow) end the labeled part of the curve.

Exception, hidden progress: when a curve carries a parameter-distance signal ``‖θ-θ0‖`` and its
noise-free distance still grows over the second half of the interval, by at least 5 % of its
value at the midpoint ``m = (s + e) / 2`` (``d(e) - d(m) >= 0.05 d(m)``), the interval is flat
geometrically but the parameters keep moving, so it is *not* a plateau (Barak et al. 2022;
grokking). Testing the second half, not the whole interval, keeps plateaus whose distance rose
early and then stopped (a net stuck at a saddle). A distance growing linearly from ~0 always
qualifies: over the second half it grows by ``(e - s) / (e + s) >= 9 %``. The hidden_progress
family and the grokking val curves are built this way and therefore carry no labels; plateau
families that have a distance signal use one that saturates early (flat during their
plateaus), so their plateaus stay labeled.

Consequences of the rule that shaped the generators (each no-plateau family asserts it has no
label, by rejection sampling):

* a power law ``a (t+t0)^-α`` drops by ``α ln 1.2 >= 0.027`` over any window of 20 % of
  ``s``, so ``α >= 0.15`` never qualifies (nor does ``α >= 0.055``) while ``t0 <= 20 dt``;
* any curve that is smooth at ``t = 0`` is flat in log-time near the start, so the early fall of
  every generated curve has a power-law factor (the fast early drop real runs have); without it
  a long, finely logged exponential would get a spurious plateau in its first hundred steps.

Noise is multiplicative log-normal, ``value = clean * exp(σ ε)``, σ in {0.005, 0.02, 0.05, 0.1}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

BAND = 0.01
MIN_REL_LEN = 0.2
MIN_INTERVALS = 8
DIST_GROWTH = 0.05
NOISES = (0.005, 0.02, 0.05, 0.1)

FAMILIES = (
    "exp_decay",
    "power_law",
    "noisy_improving",
    "plateau_then_drop",
    "oscillation",
    "divergence",
    "spike_recovery",
    "grokking",
    "hidden_progress",
    "step_decay",
)
NO_PLATEAU_FAMILIES = frozenset(
    {
        "power_law",
        "noisy_improving",
        "oscillation",
        "divergence",
        "spike_recovery",
        "hidden_progress",
    }
)


@dataclass
class Curve:
    name: str
    family: str
    steps: np.ndarray
    values: np.ndarray
    distance: np.ndarray | None
    plateaus: list[tuple[int, int]]
    no_plateau: bool
    series: str = "train"
    clean: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_steps(self) -> int:
        """Span of training steps the curve covers (for alarms per 10k steps)."""
        return int(self.steps[-1] - self.steps[0]) + 1 if len(self.steps) else 0


# ----------------------------------------------------------------------------- label rule


def _longest_flat(y: np.ndarray, band: float) -> np.ndarray:
    """For each i, the largest j >= i with max(y[i..j]) - min(y[i..j]) <= band.

    Sparse tables for range max/min plus binary lifting, all vectorized: O(n log n).
    """
    n = len(y)
    levels = max(1, int(n).bit_length())
    mx = np.empty((levels, n))
    mn = np.empty((levels, n))
    mx[0] = y
    mn[0] = y
    for k in range(1, levels):
        half = 1 << (k - 1)
        mx[k] = mx[k - 1]
        mn[k] = mn[k - 1]
        mx[k, : n - half] = np.maximum(mx[k - 1, : n - half], mx[k - 1, half:])
        mn[k, : n - half] = np.minimum(mn[k - 1, : n - half], mn[k - 1, half:])
    i = np.arange(n)
    j = i.copy()
    for k in reversed(range(levels)):
        cand = j + (1 << k)
        valid = cand < n
        c = np.where(valid, cand, n - 1)
        length = c - i + 1
        lev = np.frexp(length.astype(np.float64))[1] - 1
        right = c - (1 << lev) + 1
        hi = np.maximum(mx[lev, i], mx[lev, right])
        lo = np.minimum(mn[lev, i], mn[lev, right])
        ok = valid & (hi - lo <= band)
        j = np.where(ok, cand, j)
    return j


def label_plateaus(
    steps: np.ndarray,
    clean: np.ndarray,
    distance: np.ndarray | None = None,
    *,
    band: float = BAND,
) -> list[tuple[int, int]]:
    """Plateau intervals ``[(s, e), ...]`` of a noise-free curve by the module's label rule.

    ``distance`` (noise-free ‖θ-θ0‖, NaN where not measured) applies the hidden-progress
    exception.
    """
    steps = np.asarray(steps)
    clean = np.asarray(clean, dtype=np.float64)
    bad = ~np.isfinite(clean) | (clean <= 0)
    n = int(np.argmax(bad)) if bad.any() else len(clean)
    if n < 2:
        return []
    st = steps[:n].astype(np.float64)
    y = np.log(clean[:n])
    dt = float(np.median(np.diff(st)))
    j = _longest_flat(y, band)
    span = st[j] - st
    need = np.maximum(MIN_REL_LEN * st, MIN_INTERVALS * dt)
    keep = (span >= need) & (span > 0)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return []
    s = st[idx]
    e = st[j[idx]]
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(idx), dtype=bool)
    new[1:] = s[1:] > run_end[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(idx)) - 1
    out = [(int(s[a]), int(run_end[b])) for a, b in zip(starts, ends, strict=True)]
    if distance is not None:
        out = [iv for iv in out if not _distance_grows(steps, distance, iv)]
    return out


def _distance_grows(steps: np.ndarray, distance: np.ndarray, iv: tuple[int, int]) -> bool:
    d = np.asarray(distance, dtype=np.float64)
    ok = np.isfinite(d)
    if ok.sum() < 2:
        return False
    mid = 0.5 * (iv[0] + iv[1])
    dm, de = np.interp([mid, iv[1]], np.asarray(steps)[ok], d[ok])
    return bool(de - dm >= DIST_GROWTH * max(abs(dm), 1e-12))


# ----------------------------------------------------------------------------- grids, noise


def _grid(rng: np.random.Generator, max_points: int | None, long: bool = False) -> np.ndarray:
    """Logged steps: every step, every 10 / 50 steps, or epoch-level (20-100 points)."""
    if long:
        length, cadence = 100_000, 1
    else:
        kind = rng.integers(4)
        if kind == 0:
            length = _logu(rng, 300, 20_000)
            cadence = 1
        elif kind == 1:
            length = _logu(rng, 1_000, 100_000)
            cadence = 10
        elif kind == 2:
            length = _logu(rng, 2_500, 100_000)
            cadence = 50
        else:
            length = _logu(rng, 300, 100_000)
            cadence = max(1, length // int(rng.integers(20, 101)))
    n = max(20, length // cadence)
    if max_points is not None and n > max_points:
        n = max_points
    return (np.arange(1, n + 1) * cadence).astype(np.int64)


def _logu(rng: np.random.Generator, lo: float, hi: float) -> int:
    return round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def _noisy(rng: np.random.Generator, clean: np.ndarray, sigma: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(clean * np.exp(sigma * rng.standard_normal(len(clean))))


def _early_drop(t: np.ndarray, dt: float, t_end: float, drop: float) -> np.ndarray:
    """Log-space power-law fall of ``drop`` nats from t=dt to t_end, then constant 0."""
    alpha = drop / np.log(t_end / dt + 1.0)
    tt = np.minimum(t, t_end)
    return np.asarray(alpha * np.log((t_end + dt) / (tt + dt)))


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _saturating_distance(rng: np.random.Generator, t: np.ndarray, span: float) -> np.ndarray:
    """‖θ-θ0‖ that grows early then stays flat (no trend during plateaus)."""
    d_max = float(rng.uniform(1.0, 20.0))
    tau = float(rng.uniform(0.005, 0.03)) * span
    return d_max * (1.0 - np.exp(-t / tau))


def _linear_distance(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    v = float(rng.uniform(1e-4, 1e-2))
    return 0.05 + v * t


# ----------------------------------------------------------------------------- families

Built = tuple[np.ndarray, np.ndarray, np.ndarray | None, str]  # steps, clean, distance, series


def _exp_decay(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    dt, span = float(t[0]), float(t[-1])
    l_inf = float(np.exp(rng.uniform(np.log(0.01), np.log(1.0))))
    a = l_inf * float(np.exp(rng.uniform(np.log(3.0), np.log(300.0))))
    conv = float(rng.uniform(0.25, 0.65)) * span
    tau = conv / np.log(100.0 * a / l_inf)
    clean = l_inf + a * np.exp(-t / tau) * (t / dt) ** -0.3
    dist = _saturating_distance(rng, t, span) if rng.random() < 0.5 else None
    return [(steps, clean, dist, "train")]


def _power_law(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    alpha = float(rng.uniform(0.15, 0.6))
    t0 = float(rng.uniform(0.0, 20.0)) * float(t[0])
    a = float(np.exp(rng.uniform(0.0, 3.0)))
    clean = a * (t + t0) ** -alpha
    return [(steps, clean, None, "train")]


def _noisy_improving(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    span = float(t[-1])
    alpha = float(rng.uniform(0.15, 0.4))
    t0 = float(rng.uniform(0.0, 10.0)) * float(t[0])
    rate = float(rng.uniform(0.3, 3.0)) / span if rng.random() < 0.6 else 0.0
    clean = float(np.exp(rng.uniform(0.0, 2.0))) * (t + t0) ** -alpha * np.exp(-rate * t)
    return [(steps, clean, None, "train")]


def _drops(
    rng: np.random.Generator, t: np.ndarray, span: float, n_drops: int
) -> tuple[np.ndarray, float, float]:
    """Log-space sum of sharp sigmoid drops; returns (log curve, last centre, last width)."""
    centres = [float(rng.uniform(0.25, 0.5)) * span]
    if n_drops == 2:
        centres.append(centres[0] + float(rng.uniform(0.2, 0.35)) * span)
    y = np.zeros_like(t)
    w = span
    for c in centres:
        w = float(rng.uniform(0.004, 0.02)) * span
        h = float(np.log(rng.uniform(2.0, 20.0)))
        y += h * _logistic((c - t) / w)
    return y, centres[-1], w


def _plateau_then_drop(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    dt, span = float(t[0]), float(t[-1])
    y, c_last, w = _drops(rng, t, span, int(rng.integers(1, 3)))
    y += _early_drop(t, dt, float(rng.uniform(0.01, 0.06)) * span, float(rng.uniform(0.5, 2.0)))
    if rng.random() < 0.5:  # keep improving after the last drop (else it converges: a plateau)
        y -= float(rng.uniform(0.15, 0.3)) * np.log1p(np.maximum(t - c_last, 0.0) / (2 * w))
    clean = float(np.exp(rng.uniform(-4.0, 0.0))) * np.exp(y)
    return [(steps, clean, None, "train")]


def _hidden_progress(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    dt, span = float(t[0]), float(t[-1])
    y, c_last, w = _drops(rng, t, span, int(rng.integers(1, 3)))
    y += _early_drop(t, dt, float(rng.uniform(0.01, 0.06)) * span, float(rng.uniform(0.5, 2.0)))
    y -= float(rng.uniform(0.15, 0.3)) * np.log1p(np.maximum(t - c_last, 0.0) / (2 * w))
    clean = float(np.exp(rng.uniform(-4.0, 0.0))) * np.exp(y)
    return [(steps, clean, _linear_distance(rng, t), "train")]


def _oscillation(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    span = float(t[-1])
    n = len(t)
    alpha = float(rng.uniform(0.15, 0.35))
    t0 = float(rng.uniform(0.0, 10.0)) * float(t[0])
    base = np.log(float(np.exp(rng.uniform(0.0, 2.0))) * (t + t0) ** -alpha)
    amp = float(np.log(rng.uniform(1.3, 1.8)))
    onset = float(rng.uniform(0.1, 0.4)) * span
    ramp = np.clip((t - onset) / (0.05 * span), 0.0, 1.0)
    if rng.random() < 0.5:
        period = float(rng.uniform(4.0, 30.0))  # in logged points
        osc = np.sin(2 * np.pi * np.arange(n) / period + float(rng.uniform(0, 2 * np.pi)))
    else:  # bouncing like a random walk: an AR(1) process with a short memory, unit variance
        phi = float(rng.uniform(0.0, 0.6))
        eps = rng.standard_normal(n)
        osc = np.empty(n)
        osc[0] = eps[0]
        for k in range(1, n):
            osc[k] = phi * osc[k - 1] + np.sqrt(1 - phi * phi) * eps[k]
    clean = np.exp(base + amp * ramp * osc)
    return [(steps, clean, None, "train")]


def _divergence(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    span = float(t[-1])
    alpha = float(rng.uniform(0.15, 0.5))
    t0 = float(rng.uniform(0.0, 10.0)) * float(t[0])
    y = np.log(float(np.exp(rng.uniform(0.0, 2.0))) * (t + t0) ** -alpha)
    t_b = float(rng.uniform(0.3, 0.8)) * span
    growth = float(rng.uniform(5.0, 40.0))  # nats gained from t_b to the end
    y += growth * np.maximum(t - t_b, 0.0) / (span - t_b)
    clean = np.exp(y)
    return [(steps, clean, None, "train")]


def _spike_recovery(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    dt, span = float(t[0]), float(t[-1])
    alpha = float(rng.uniform(0.15, 0.5))
    t0 = float(rng.uniform(0.0, 10.0)) * dt
    y = np.log(float(np.exp(rng.uniform(0.0, 2.0))) * (t + t0) ** -alpha)
    for _ in range(int(rng.integers(1, 4))):
        at = float(rng.uniform(0.2, 0.9)) * span
        width = float(rng.uniform(2.0, 15.0)) * dt
        gap = np.maximum(t - at, 0.0)
        y += float(np.log(rng.uniform(2.0, 10.0))) * np.where(t >= at, np.exp(-gap / width), 0.0)
    return [(steps, np.exp(y), None, "train")]


def _grokking(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    dt, span = float(t[0]), float(t[-1])
    l0 = float(np.log(rng.uniform(2.0, 5.0)))
    fit = float(rng.uniform(0.02, 0.1)) * span
    early = _early_drop(t, dt, fit, float(rng.uniform(4.0, 7.0)))
    train = l0 * np.exp(early - early[0])  # starts at l0, flat at l0·e^-drop after ``fit``
    centre = float(rng.uniform(0.4, 0.75)) * span
    w = float(rng.uniform(0.005, 0.02)) * span
    h = float(np.log(rng.uniform(5.0, 50.0)))
    yv = np.log(l0 * 1.05) + h * (_logistic((centre - t) / w) - 1.0)
    yv += _early_drop(t, dt, 0.02 * span, 0.2)
    yv -= float(rng.uniform(0.15, 0.3)) * np.log1p(np.maximum(t - centre, 0.0) / (2 * w))
    dist = _linear_distance(rng, t)
    return [(steps, train, None, "train"), (steps, np.exp(yv), dist, "val")]


def _step_decay(rng: np.random.Generator, max_points: int | None, long: bool) -> list[Built]:
    steps = _grid(rng, max_points, long)
    t = steps.astype(float)
    dt, span = float(t[0]), float(t[-1])
    n_drops = int(rng.integers(2, 4))
    bounds = [0.0, *sorted(rng.uniform(0.25, 0.85, n_drops) * span), span + 1]
    floor = float(np.exp(rng.uniform(np.log(0.05), np.log(1.0))))
    top = floor * float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
    clean = np.empty_like(t)
    start_val = top
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        m = (t >= lo) & (t < hi)
        tau = float(rng.uniform(0.02, 0.08)) * (hi - lo)
        d = t[m] - lo
        clean[m] = floor + (start_val - floor) * np.exp(-d / tau) * (1.0 + d / dt) ** -0.3
        start_val = floor
        floor *= float(rng.uniform(0.3, 0.7))
    dist = _saturating_distance(rng, t, span) if rng.random() < 0.5 else None
    return [(steps, clean, dist, "train")]


GENERATORS: dict[str, Callable[[np.random.Generator, int | None, bool], list[Built]]] = {
    "exp_decay": _exp_decay,
    "power_law": _power_law,
    "noisy_improving": _noisy_improving,
    "plateau_then_drop": _plateau_then_drop,
    "oscillation": _oscillation,
    "divergence": _divergence,
    "spike_recovery": _spike_recovery,
    "grokking": _grokking,
    "hidden_progress": _hidden_progress,
    "step_decay": _step_decay,
}
LONG_FAMILIES = ("exp_decay", "plateau_then_drop", "power_law")


def _acceptable(family: str, built: list[Built], labels: list[list[tuple[int, int]]]) -> bool:
    """Each family's intent, checked on the labels the rule gives."""
    if family in NO_PLATEAU_FAMILIES:
        return all(not lab for lab in labels)
    if family == "grokking":
        return len(labels[0]) == 1 and labels[0][0][1] == int(built[0][0][-1]) and not labels[1]
    lab = labels[0]
    span = float(built[0][0][-1])
    if not lab:
        return False
    if family == "exp_decay":
        return len(lab) == 1 and lab[0][1] == int(span) and lab[0][0] >= 0.1 * span
    if family == "plateau_then_drop":
        return lab[0][1] < 0.7 * span  # the flat stretch before a drop is labeled
    if family == "step_decay":
        return len(lab) >= 2
    return True


def _noise_level(rng: np.random.Generator, family: str) -> float:
    if family == "noisy_improving":
        return float(rng.choice([0.05, 0.1]))
    return float(rng.choice(NOISES))


def make_family(
    family: str, index: int, seed: int = 0, max_points: int | None = None
) -> list[Curve]:
    fam_id = FAMILIES.index(family)
    gen = GENERATORS[family]
    long = index == 0 and family in LONG_FAMILIES and max_points is None
    for attempt in range(500):
        rng = np.random.default_rng([seed, fam_id, index, attempt])
        built = gen(rng, max_points, long)
        labels = [label_plateaus(s, c, d) for s, c, d, _ in built]
        if not _acceptable(family, built, labels):
            continue
        sigma = _noise_level(rng, family)
        out = []
        for (steps, clean, dist, series), lab in zip(built, labels, strict=True):
            values = _noisy(rng, clean, sigma)
            if family == "divergence" and rng.random() < 0.5:  # ends in overflow
                k = int(0.97 * len(values))
                values[k:] = np.where(rng.random(len(values) - k) < 0.5, np.inf, np.nan)
            noisy_d = None if dist is None else _noisy(rng, dist, 0.01)
            no_plat = family in NO_PLATEAU_FAMILIES or not lab
            if family in NO_PLATEAU_FAMILIES or (family == "grokking" and series == "val"):
                assert not lab, (family, index, lab)
            out.append(
                Curve(
                    name=f"{family}/{index:02d}/{series}"
                    if len(built) > 1
                    else f"{family}/{index:02d}",
                    family=family,
                    steps=steps,
                    values=values,
                    distance=noisy_d,
                    plateaus=lab,
                    no_plateau=no_plat,
                    series=series,
                    clean=clean,
                )
            )
        return out
    raise AssertionError(f"{family}/{index}: no acceptable curve in 500 attempts")


def generate_curves(
    seed: int = 0, n_per_family: int = 21, max_points: int | None = None
) -> list[Curve]:
    """All families, ``n_per_family`` runs each (grokking runs give two curves).

    ``max_points`` caps the number of logged points per curve (the ``--quick`` subset).
    """
    out: list[Curve] = []
    for fam in FAMILIES:
        for i in range(n_per_family):
            out.extend(make_family(fam, i, seed, max_points))
    return out
