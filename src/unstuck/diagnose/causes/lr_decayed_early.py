"""LR decayed too early: the schedule annealed the learning rate before the loss converged."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.detect.detector import EARLY_DROP, NEAR_CONVERGENCE_DROP
from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import FLAT_STATES, loss_drop, recent_median
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import DIRECTION_SNR
from unstuck.types import Finding, Remedy

# One decade: what a step-decay stage cuts (×0.1 at each milestone: Goyal et al. 2017's
# ImageNet schedule). A run whose LR fell by less is still on its first stage.
DECAYED_BY = 10.0  # ours, from the step-decay convention above
# The restart climbs back half the decades the schedule fell and settles a quarter of the way
# up (SGDR restarts to the schedule's maximum; half keeps the first restart a verified step).
MAX_RESTART_PEAK = 100.0
# Early: the schedule was a decade down while most of the steps so far were still to come. A
# cosine reaches a tenth of its peak at 80 % of its length and a 30/60/90 step schedule its
# first decade at a third; a fault puts the cut where more of the run is spent below it than
# above it. Ours, definitional (half the run), not fitted.
EARLY_SHARE = 0.5
# A loss that did not fall while the LR was high clears the schedule, unless the high-LR phase
# was too short to judge: the decade came within the first tenth of the steps so far. No
# standard schedule cuts a decade that early (step decays at a third or later, a cosine at 80 %
# of its length, OneCycle past its 30 % peak); ours, definitional, not fitted.
NO_TIME_SHARE = 0.1
# Flat, or crawling: after a decade's cut a loss that still has signal creeps ("slow") at the
# pace the small LR allows, the stall a step schedule's users see after a milestone.
STALLED_STATES = FLAT_STATES | {
    "slow"
}  # the largest jump one restart takes (the lr_scale cap's size)


def _decay(ev: Evidence) -> tuple[float, float, float, int, int | None] | None:
    """(peak LR, LR now, peak / now, step of the peak, first step the schedule was a decade
    below the peak or None) of the param group whose LR fell the most, with unstuck's current
    multiplier on the LR now; None without an LR history."""
    multiplier = ev.get("lr_multiplier", 1.0)
    multiplier = float(multiplier) if isinstance(multiplier, (int, float)) else 1.0
    best: tuple[float, float, float, int, int | None] | None = None
    for name in ev:
        if not name.startswith("lr/"):
            continue
        steps, values = ev.steps_of(name), ev.values_of(name)
        keep = np.isfinite(values) & (values > 0)
        steps, values = steps[keep], values[keep]
        if values.size < 2:
            continue
        at = int(np.argmax(values))
        peak, now = float(values[at]), float(values[-1]) * multiplier
        if now <= 0:
            continue
        ratio = peak / now
        below = np.nonzero(values[at:] <= peak / DECAYED_BY)[0]
        fell_at = int(steps[at + below[0]]) if below.size else None
        if best is None or ratio > best[2]:
            best = (peak, now, ratio, int(steps[at]), fell_at)
    return best


class LrDecayedEarly(Rule):
    """The training loss is flat or crawling, the schedule put the LR a decade below its peak
    within the first half of the steps so far, the loss fell while the LR was high but by less
    than a decade, and the gradient still has a direction (SNR ≥ 0.1); or the decade came in
    the first tenth of the steps, before the loss had fallen at all."""

    code: ClassVar[str] = "lr_decayed_early"
    requires: ClassVar[frozenset[str]] = frozenset({"loss", "lr/*", "grad_snr"})
    # Tiny steps after the decay are this cause's symptom: the LR is low because the schedule
    # lowered it, and raising it over the remaining schedule is the restart's job.
    explains: ClassVar[frozenset[str]] = frozenset({"lr_too_low"})
    explanation: ClassVar[str] = (
        "The learning-rate schedule annealed before the loss converged: the loss fell while "
        "the LR was high (by less than a decade), then stalled once the schedule had cut the "
        "LR by a decade or more, while the gradient still points somewhere. Its "
        "signal-to-noise ratio is above 0.1, which momentum or Adam's ~10-step average still "
        "follows (Mahsereci et al. 2017), so the loss is not at a noise floor: the steps are "
        "too small to follow it. Do: a warm restart (SGDR, Loshchilov & Hutter 2017) — "
        "unstuck raises its multiplier to climb back half the decades the schedule fell, lets "
        "it settle a quarter of the way up, and rolls it back if the loss did not go down; in "
        "your config, decay later (milestones later in the run, a longer cosine) or to a "
        "higher floor."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if ev.get("detector_series", "train") != "train":
            return None
        state = str(ev.get("detector_state", ""))
        if state not in STALLED_STATES:
            return None
        decay = _decay(ev)
        if decay is None or decay[2] < DECAYED_BY:
            return None
        peak, now, ratio, peak_step, fell_at = decay
        if fell_at is None or fell_at > EARLY_SHARE * ev.step:
            return None  # the decade came late in the run: the schedule's plan, not a fault
        snr = recent_median(ev, "grad_snr")
        if snr is None:
            return None
        drop = loss_drop(ev)
        if drop is None:
            return None
        start, level, log_drop = drop
        fallen = 1.0 - level / start
        reading = "stalled_after_fall"
        if fallen < EARLY_DROP:
            if fell_at > NO_TIME_SHARE * ev.step:
                return None  # it never learned at the high LR either: not the schedule's doing
            # The high LR had no time to show what it could do. A loss still at its start is
            # no floor, so a gradient lost in its noise does not clear the schedule here.
            reading = "cut_before_learning"
        elif snr < DIRECTION_SNR:
            return None  # no direction left to follow: a floor (converged), not a schedule's stall
        if log_drop >= NEAR_CONVERGENCE_DROP:
            return None  # fallen a decade: near convergence, where a decayed LR is the plan
        decades = math.log10(ratio)
        confidence = found_confidence(0.1 * (decades - 1.0), cap=0.85)
        restart_peak = min(math.sqrt(ratio), MAX_RESTART_PEAK)
        settle = min(ratio**0.25, restart_peak / 2.0)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "reading": reading,
                "lr_peak": peak,
                "lr_peak_step": peak_step,
                "lr_decade_step": fell_at,
                "early_share": EARLY_SHARE,
                "lr_now": now,
                "decayed_by": ratio,
                "threshold": DECAYED_BY,
                "grad_snr": snr,
                "direction_snr": DIRECTION_SNR,
                "loss_start": start,
                "loss_now": level,
                "fallen": fallen,
                "log_drop": log_drop,
                "near_convergence_drop": NEAR_CONVERGENCE_DROP,
                "detector_state": state,
            },
            step=ev.step,
            summary=(
                f"the LR is {ratio:.3g}× below its peak ({peak:.3g} at step {peak_step}) and "
                f"the loss has stalled at {level:.3g} while its gradient still has a direction "
                f"(SNR {snr:.2g}): the schedule decayed before the loss converged"
                if reading == "stalled_after_fall"
                else f"the schedule cut the LR a decade below its peak by step {fell_at}, before "
                f"the loss had fallen at all; it is now {ratio:.3g}× below and the loss has "
                f"stalled at {level:.3g}, near where it started"
            ),
            remedies=(
                Remedy(
                    "warm_restart",
                    {"peak": round(restart_peak, 3), "end": round(settle, 3), "length": 200},
                    automatic=True,
                    note="a restart back up half the decades the schedule fell",
                ),
            ),
        )
