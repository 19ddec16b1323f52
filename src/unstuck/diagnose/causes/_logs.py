"""Shared readings for the log-level evidence paths (not a rule: the name starts with ``_``).

A log another tool wrote (``unstuck analyze``) holds the training and validation loss, the LR
of each group and at best a global gradient norm: none of the update/weight ratios, gradient
SNR or per-tensor norms the Guard measures. Some rules fall back on a weaker reading of those
series when their main inputs are absent (``Rule.requires_any``); these helpers are what they
share. Docs: the "From logs" section of each cause's page, and docs/analyze.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from unstuck.detect.detector import OSCILLATION_AUTOCORR, OSCILLATION_SIGMA
from unstuck.diagnose.base import ROOT_CONFIDENCE
from unstuck.diagnose.evidence import Evidence

__all__ = [
    "ANNEALED",
    "LOG_MAX_CONFIDENCE",
    "SwingReading",
    "detector_stats",
    "finite_or_nan",
    "latest_lrs",
    "lr_never_changed",
    "lr_text",
    "read_swings",
    "schedule_annealed",
    "structured_swings",
]

# A reading from the loss shape alone is a hint, not an alarm: it stays below the bar at which a
# finding is acted on and explains away its symptoms (as converged and capacity_limit do), since
# the rules that would tell the other explanations apart cannot run on a log.
LOG_MAX_CONFIDENCE = ROOT_CONFIDENCE - 0.05  # ours, global: just below the "problem" bar


def _lr_names(ev: Evidence) -> list[str]:
    return sorted(name for name in ev if name.startswith("lr/"))


def latest_lrs(ev: Evidence) -> dict[str, float]:
    """The latest finite value of every ``lr/<group>`` series (empty when the log has none)."""
    out = {}
    for name in _lr_names(ev):
        values = ev.values_of(name)
        values = values[np.isfinite(values)]
        if values.size:
            out[name] = float(values[-1])
    return out


def lr_never_changed(ev: Evidence) -> bool:
    """Some LR is known and no ``lr/<group>`` series ever changed its value: a constant LR, no
    schedule at work (no warm-up, no decay) over the kept history."""
    seen = False
    for name in _lr_names(ev):
        values = ev.values_of(name)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        seen = True
        if float(values.max()) != float(values.min()):
            return False
    return seen


# A schedule that has brought the LR to a tenth of its peak or below (a cosine or linear decay
# near its end, step decays) is taking small steps on purpose: per step the loss can fall only
# about LR·‖g‖², a tenth of what it could at the peak, so a flat loss there is what the schedule
# running out looks like, whether or not a minimum was reached.
ANNEALED = 0.1  # one decade below the peak (lr_too_low's reading of an annealing schedule too)


def schedule_annealed(ev: Evidence) -> tuple[str, float, float] | None:
    """``(series, latest LR, peak LR)`` of the first ``lr/<group>`` whose latest finite value is
    at most ``ANNEALED`` of its peak, or ``None`` (no LR logged, or none annealed)."""
    for name in _lr_names(ev):
        values = ev.values_of(name)
        values = values[np.isfinite(values)]
        if values.size and values.max() > 0 and values[-1] <= ANNEALED * values.max():
            return name, float(values[-1]), float(values.max())
    return None


def lr_text(ev: Evidence) -> str:
    """`` at LR 0.1 (lr/0)`` for the summary; empty when the log holds no LR."""
    lrs = latest_lrs(ev)
    if not lrs:
        return ""
    shown = ", ".join(f"{v:.3g} ({k})" for k, v in list(lrs.items())[:3])
    more = f" and {len(lrs) - 3} more groups" if len(lrs) > 3 else ""
    return f" at LR {shown}{more}"


def finite_or_nan(value: object) -> float:
    """A number for a finding's evidence: the value as a float, NaN when it is not one."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def detector_stats(ev: Evidence) -> dict[str, Any]:
    """The numbers behind the detector's latest decision (``detector_stats``), or {}."""
    stats = ev.get("detector_stats")
    return stats if isinstance(stats, dict) else {}


def structured_swings(stats: dict[str, Any]) -> bool:
    """The detector's own oscillation test on its latest numbers: a spread above
    ``OSCILLATION_SIGMA`` with a lag-1 autocorrelation above ``OSCILLATION_AUTOCORR`` in
    magnitude, between bins or inside them. The detector reports ``oscillating`` only while no
    plateau is open; on an open plateau the same swings leave it at ``plateau`` (a loss that
    bounces on a floor), and this reads them there."""
    between = (
        finite_or_nan(stats.get("spread")) > OSCILLATION_SIGMA
        and abs(finite_or_nan(stats.get("autocorr"))) > OSCILLATION_AUTOCORR
    )
    within = (
        finite_or_nan(stats.get("within_spread")) > OSCILLATION_SIGMA
        and abs(finite_or_nan(stats.get("within_autocorr"))) > OSCILLATION_AUTOCORR
    )
    return bool(between or within)


# -- swings that a log can show: a climb or a bounce, told apart from noise and rounding -------

SWING_WINDOW = 200  # latest points read (a few flushes' worth of per-step logging)
SWING_BLOCKS = 8  # block medians the climb is read on: robust to minibatch noise and spikes
MIN_BLOCK_POINTS = 6  # fewer points per block and the block medians are too noisy to read
# A climb is the largest rise of a block median over an earlier one, in standard errors of the
# difference of two block medians (1.2533·σ/√m each, σ from the residuals' MAD). Calibrated
# once by simulation (3,000 windows of 100 points each): white noise, normal or Student-t with
# 2 degrees of freedom, stays below 4.7 and 4.9 at the 99.9th percentile; a rise of 1.7σ over the
# window reaches 3.7 at the median and a 3.3σ bump 4.4. 5 keeps a log-level claim rare on noise.
CLIMB_Z = 5.0
# A period-2 bounce (each step overshoots the last) makes consecutive differences alternate in
# sign: their lag-1 autocorrelation goes to −1, where white noise gives −0.5 in expectation and a
# smooth trend under noise the same. Its 0.1th percentile over simulated white noise (4,000
# windows each, normal and Student-t(2)): −0.87 at 16 points, −0.82 at 20, −0.80 at 30, −0.74
# at 50, −0.70 at 100, −0.65 at 200; −(0.55 + 1.5/√n) stays below all of them. A swing of twice
# the noise reaches −0.90 at 20 points and −0.94 at 200.
BOUNCE_BASE, BOUNCE_SCALE = 0.55, 1.5
MIN_SWING_POINTS = 16  # fewer points and neither a climb nor a bounce can be told from noise


def bounce_threshold(points: int) -> float:
    """The lag-1 autocorrelation below which white noise of ``points`` values rarely goes."""
    return -(BOUNCE_BASE + BOUNCE_SCALE / math.sqrt(points))


# Logged values rounded to a decimal quantum (the HF Trainer logs round(loss, 4)): swings within
# two quanta are the rounding, not the loss. Only a quantum of 1e-3 or finer counts as rounding:
# a loss that lives on coarser steps is a loss, not a print format.
ROUNDING_STEPS = 2
FINEST_ROUNDING = 1e-3
MAX_DECIMALS = 8


def decimal_quantum(values: np.ndarray) -> float:
    """The power of ten every value is a multiple of (1e-4 for values logged to 4 decimals);
    0.0 when the values are not rounded to 8 decimals or fewer."""
    scale = np.maximum(np.abs(values), 1.0)
    for decimals in range(MAX_DECIMALS + 1):
        scaled = values * 10.0**decimals
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6 * scale * 10.0**decimals):
            return float(10.0**-decimals)
    return 0.0


@dataclass(frozen=True)
class SwingReading:
    """What the latest logged losses show beyond their noise and their rounding."""

    points: int
    climb_z: float  # the largest rise of a block median, in standard errors
    rise: float  # that rise in loss units
    bounce_rho: float  # lag-1 autocorrelation of consecutive differences (−0.5 for noise)
    resolution: float  # the decimal quantum the values were logged at (0: not rounded)
    rounding: bool  # every swing is within ROUNDING_STEPS of the resolution

    @property
    def climbs(self) -> bool:
        return self.climb_z > CLIMB_Z and self.rise >= ROUNDING_STEPS * self.resolution

    @property
    def bounces(self) -> bool:
        return self.bounce_rho < bounce_threshold(self.points) and not self.rounding

    @property
    def beyond_noise(self) -> bool:
        """A swing minibatch noise and the log's rounding cannot explain."""
        return not self.rounding and (self.climbs or self.bounces)


def read_swings(values: np.ndarray) -> SwingReading | None:
    """Read the latest losses of a log for a climb or a bounce; ``None`` with too few points."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)][-SWING_WINDOW:]
    if x.size < MIN_SWING_POINTS:
        return None
    # Up to 8 blocks of at least 6 points: a short window gets fewer blocks, fewer pairs of
    # blocks to compare, so the same threshold is, if anything, stricter there.
    n_blocks = min(SWING_BLOCKS, x.size // MIN_BLOCK_POINTS)
    per_block = x.size // n_blocks
    resolution = decimal_quantum(x)
    blocks = x[-per_block * n_blocks :].reshape(n_blocks, per_block)
    medians = np.median(blocks, axis=1)
    residuals = blocks - medians[:, None]
    sigma = 1.4826 * float(np.median(np.abs(residuals)))
    sigma = max(sigma, resolution / math.sqrt(12.0))  # rounding noise at least (σ of a quantum)
    se = 1.2533 * sigma / math.sqrt(per_block) * math.sqrt(2.0)
    rises = medians - np.minimum.accumulate(medians)
    rise = float(rises.max())
    climb_z = rise / se if se > 0 else (math.inf if rise > 0 else 0.0)
    d = np.diff(x)
    d = d - d.mean()
    denom = float(np.dot(d, d))
    rho = float(np.dot(d[1:], d[:-1]) / denom) if denom > 0 else 0.0
    spread = float(np.percentile(x, 90) - np.percentile(x, 10))
    rounding = 0 < resolution <= FINEST_ROUNDING and spread <= ROUNDING_STEPS * resolution
    return SwingReading(int(x.size), climb_z, rise, rho, resolution, bool(rounding))
