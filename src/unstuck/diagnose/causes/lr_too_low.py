"""Steps too small: the LR is far below what the model tolerates."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import (
    NEAR_CONVERGENCE_DROP,
    loss_drop,
    momentum_remedies,
    recent_median,
)
from unstuck.diagnose.causes._logs import schedule_annealed
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import LOW_UPDATE_RATIO, RECENT_POINTS
from unstuck.types import Finding, Remedy

MAX_RAISE = 100.0  # never raise the LR by more than two decades in one action
MIN_RAISE = 2.0
# The update/weight ratio the raise aims for. CS231n's "about 1e-3" is SGD's late-training rule
# of thumb; healthy runs of every optimizer family sit higher, and a raise aimed at 1e-3 left the
# zoo's Adam runs a decade short (a digits MLP 224x too low raised x21, the rest only after a
# 200-step verdict). Measured once on the fault zoo's train split (bench/zoo/update_ratios.py):
# the median over its 10 programs of each program's median ratio over its healthy runs.
RAISE_TARGET_RATIO = 4.77e-3

# No reading from a log (no update ratio). At a constant LR a log holds no contrast to judge the
# LR against: while steps are small the loss follows gradient flow, a function of LR × steps
# alone, so a loss that creeps at one LR is as much a run stopped early as a too-small LR, and
# one that stalled is as much a flat region, dead units or a broken loss. Neither is evidence
# for this cause; ``unstuck analyze`` says so in a note (docs/causes/lr_too_low.md).


def _schedule_annealed(ev: Evidence) -> bool:
    """Your own schedule brought the LR a decade or more below its peak: small steps by design."""
    return schedule_annealed(ev) is not None


def _converged(ev: Evidence) -> bool:
    """The loss fell by the detector's near-convergence drop and the gradient is below its
    noise: small steps are what convergence looks like (``converged``), not a too-small LR."""
    drop = loss_drop(ev)
    snr = recent_median(ev, "grad_snr")
    return drop is not None and snr is not None and drop[2] >= NEAR_CONVERGENCE_DROP and snr < 1


def _gradient_fell(ev: Evidence, ratio: float, grad: float) -> bool:
    """The steps are small because the gradient shrank, not because the LR is small: at the
    largest gradient norm the run has had (a flush's median), the same LR would move the
    weights by at least ``LOW_UPDATE_RATIO``. A run that reached its minimum (a noiseless fit
    down to rounding, where the gradient never drops below its noise) looks like this; so does
    a collapsing signal, which is vanishing_gradients' to report."""
    peak = ev.get("grad_norm_peak")
    if not isinstance(peak, float) or not math.isfinite(peak):
        return False
    return ratio * peak / grad >= LOW_UPDATE_RATIO


# A run shorter than the update-ratio cadence is judged by the ratios of its first steps
# (update_ratio_early), which an optimizer's warm-up (Adam's bias correction, a schedule's
# ramp) moves by up to a decade or two: only steps two decades below the bar (1e-6) are called
# too small there. Ours, global.
SHORT_RUN_MARGIN = 100.0


class LRTooLow(Rule):
    """The update/weight ratio sits well below 1e-4 while gradients are finite and non-zero."""

    code: ClassVar[str] = "lr_too_low"
    requires: ClassVar[frozenset[str]] = frozenset({"update_ratio", "grad_norm"})
    uses: ClassVar[frozenset[str]] = frozenset({"update_ratio_early"})
    # Tiny steps with healthy gradients are these causes' symptom, not a too-small LR.
    # A flat landscape or a saddle makes small steps too; their remedies raise the LR as well.
    # Units killed by a blow-up (lr_too_high) or dead from the start (dead_relu) leave tiny
    # updates behind: raising the LR there is the opposite of the fix.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {
            "lr_too_high",
            "dead_relu",
            "over_clipping",
            "stale_optimizer_state",
            "precision_underflow",
            "flat_region",
            "saddle_point",
            "saturated_activations",
        }
    )
    explanation: ClassVar[str] = (
        "Each optimizer step moves the weights by a tiny fraction of their size (the update/weight "
        "ratio is far below the 1e-3 to 1e-2 that healthy runs show), while the gradients "
        "themselves are healthy. The loss still creeps down, so 'no new best for N epochs' rules "
        "never fire, but the run would take orders of magnitude longer than needed. Raise the "
        "learning rate: unstuck estimates the factor that brings the ratio to what healthy runs "
        "show (~5e-3), applies it as a multiplier over your schedule, and rolls it back if the "
        "loss gets worse."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if "update_ratio" not in ev:
            return None  # a log: no framework records update ratios, and nothing else will do
        ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
        grads = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
        ratios = ratios[np.isfinite(ratios)]
        reading = "ratio"
        if ratios.size < 2:
            # A run shorter than the cadence has one regular ratio: it judges its LR by the
            # early ones (steps 1, 2, 4, ...), at a bar two decades lower.
            early = ev.values_of("update_ratio_early")
            ratios = np.concatenate([early[np.isfinite(early)], ratios])
            reading = "short_run"
        if ratios.size < 2 or grads.size == 0 or not np.all(np.isfinite(grads)):
            return None
        ratio = float(np.median(ratios))
        grad = float(np.median(grads))
        bar = LOW_UPDATE_RATIO if reading == "ratio" else LOW_UPDATE_RATIO / SHORT_RUN_MARGIN
        if ratio >= bar or ratio <= 0.0 or grad <= 0.0:
            return None
        if _schedule_annealed(ev) or _converged(ev) or _gradient_fell(ev, ratio, grad):
            return None
        decades_below = float(np.log10(LOW_UPDATE_RATIO / ratio))
        estimate = RAISE_TARGET_RATIO / ratio
        factor = float(np.clip(estimate, MIN_RAISE, MAX_RAISE))
        confidence = found_confidence(0.2 * decades_below)
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "reading": reading,
                "update_ratio_median": ratio,
                "threshold": LOW_UPDATE_RATIO,
                "grad_norm_median": grad,
                "suggested_factor": factor,
            },
            step=ev.step,
            summary=f"update/weight ratio {ratio:.1e} is {decades_below:.1f} decades below "
            f"{LOW_UPDATE_RATIO:.0e} with healthy gradients (norm {grad:.2g})",
            # ``estimate``: the whole raise the ratio asks for; past the two-decade cap the
            # engine applies the rest as a follow-up once this step has been verified.
            remedies=(
                *momentum_remedies(ev, "×10 the stride along a slope that keeps its direction"),
                Remedy(
                    "lr_scale",
                    {"factor": round(factor, 3), "estimate": round(float(estimate), 3)},
                    automatic=True,
                ),
            ),
        )
