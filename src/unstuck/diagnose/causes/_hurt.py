"""Whether the training loss is hurt: the gate for rules whose evidence healthy runs show too.

Not a rule (the name starts with ``_``, so discovery skips it). A share of dead ReLUs, an
update ratio above the textbook 1e-3 in Adam's first steps, a gradient below its minibatch
noise or a skewed label distribution are common in runs that train fine. Such a rule speaks
only when the loss says something is wrong (issue 24, "silence on healthy runs"): it climbs
or bounces beyond its noise, is non-finite, or has stalled near where it started.
"""

from __future__ import annotations

import math

import numpy as np

from unstuck.detect.detector import EARLY_DROP
from unstuck.diagnose.causes._landscape import (
    HEAD_POINTS,
    LEVEL_POINTS,
    loss_levels,
    recent_median,
)
from unstuck.diagnose.causes._logs import read_swings
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import RECENT_POINTS

__all__ = ["STALLED_STATES", "STALL_DROP", "loss_fell", "loss_hurt", "noise_floor_share"]

# The detector's states in which the loss is flat, bouncing or climbing ("slow" is a loss that
# still falls significantly: not hurt).
STALLED_STATES = frozenset({"plateau", "hidden_progress", "oscillating", "diverging"})
# Stalled near its start: the loss has not fallen the detector's "meaningful" 10 % (EARLY_DROP)
# below its starting level, in log units.
STALL_DROP = -math.log(1.0 - EARLY_DROP)


def loss_fell(ev: Evidence) -> float | None:
    """ln(start / now) of the training loss (start: ``loss_initial`` or the median of the first
    ``HEAD_POINTS``; now: the median of the latest ``LEVEL_POINTS``); None without a positive
    loss or with fewer than ``HEAD_POINTS`` finite points."""
    levels = loss_levels(ev, HEAD_POINTS)
    return None if levels is None else math.log(levels[0] / levels[1])


def loss_hurt(ev: Evidence, states: frozenset[str] = STALLED_STATES) -> str | None:
    """How the training loss is hurt, or None when it is not: ``non-finite`` (the latest points
    hold a NaN or inf), ``climbing`` / ``bouncing`` (``read_swings``: beyond minibatch noise),
    ``stalled`` (a detector state among ``states`` on a loss that has not fallen
    ``EARLY_DROP`` below its start; a rule may count a crawl, ``slow``, among them)."""
    values = ev.values_of("loss")[-LEVEL_POINTS:]
    if values.size and not np.all(np.isfinite(values)):
        return "non-finite"
    swings = read_swings(ev.values_of("loss"))
    if swings is not None and not swings.rounding:
        if swings.climbs:
            return "climbing"
        if swings.bounces:
            return "bouncing"
    if ev.get("detector_state") in states:
        fell = loss_fell(ev)
        if fell is not None and fell < STALL_DROP:
            return "stalled"
    return None


def noise_floor_share(ev: Evidence) -> float | None:
    """How far above its minimum the gradient noise holds the loss, as a share of the loss.

    ‖Δθ‖·‖g‖ / (4 L): Mandt et al. 2017's stationary excess η·tr Σ_B / 4 with η = ‖Δθ‖/‖g‖ and
    ‖g‖² ≈ tr Σ_B (the gradient below its noise). ‖θ‖ comes from the weight-norm signal.
    """
    update = recent_median(ev, "update_ratio")
    grad = recent_median(ev, "grad_norm", RECENT_POINTS * 4)
    weight = recent_median(ev, "weight_norm")
    loss = recent_median(ev, "loss", LEVEL_POINTS)
    if update is None or grad is None or weight is None or loss is None or loss <= 0:
        return None
    return update * weight * grad / (4.0 * loss)
