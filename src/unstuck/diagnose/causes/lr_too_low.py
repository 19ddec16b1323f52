"""Steps too small: the LR is far below what the model tolerates."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.detect.detector import DEFAULT_EPSILON, EARLY_DROP
from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import (
    NEAR_CONVERGENCE_DROP,
    loss_drop,
    momentum_remedies,
    recent_median,
)
from unstuck.diagnose.causes._logs import (
    LOG_MAX_CONFIDENCE,
    detector_stats,
    finite_or_nan,
    latest_lrs,
    lr_never_changed,
    lr_text,
    schedule_annealed,
    structured_swings,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import HEALTHY_UPDATE_RATIO, LOW_UPDATE_RATIO, RECENT_POINTS
from unstuck.types import Finding, Remedy

MAX_RAISE = 100.0  # never raise the LR by more than two decades in one action
MIN_RAISE = 2.0

# From a log (no update ratio): "consistent tiny slope" (DESIGN's catalog) at an LR that never
# changed, read with the detector's own constants. The run never got going: a plateau on which
# the loss had fallen less than EARLY_DROP (the detector's "early" kind), or a slow state (a
# significant fall below the progress margin) on which the whole run fell less than that margin,
# 2·DEFAULT_EPSILON, i.e. a creep from the start rather than a fast fall that has slowed down.
CREEP_DROP = 2 * DEFAULT_EPSILON  # the detector's "improving" margin (log units, ≈ 26 %)
# A hint, well below the act bar: without update ratios a creeping or stalled loss at a constant
# LR is as much a broken model (vanishing gradients, a bad init) or a hard task as a small LR.
LOG_CONFIDENCE = {"slow": 0.35, "plateau": 0.3}  # a significant creep shows the model learns
HEALTHY_GRADS_BONUS = 0.05  # a logged grad_norm, finite and non-zero: the gradients are healthy


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


class LRTooLow(Rule):
    """The update/weight ratio sits well below 1e-4 while gradients are finite and non-zero."""

    code: ClassVar[str] = "lr_too_low"
    requires: ClassVar[frozenset[str]] = frozenset({"update_ratio", "grad_norm"})
    # From a log: the training loss, the detector's state on it and some LR (``_from_logs``).
    requires_any: ClassVar[tuple[frozenset[str], ...]] = (
        frozenset({"loss", "detector_state", "lr/*"}),
    )
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
        "ratio is far below the ~1e-3 that healthy runs show), while the gradients themselves are "
        "healthy. The loss still creeps down, so 'no new best for N epochs' rules never fire, but "
        "the run would take orders of magnitude longer than needed. Raise the learning rate: "
        "unstuck estimates the factor that brings the ratio back to ~1e-3, applies it as a "
        "multiplier over your schedule, and rolls it back if the loss gets worse."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if "update_ratio" not in ev:
            return self._from_logs(ev)  # a log: no framework records update ratios
        ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
        grads = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
        ratios = ratios[np.isfinite(ratios)]
        if ratios.size < 2 or grads.size == 0 or not np.all(np.isfinite(grads)):
            return None
        ratio = float(np.median(ratios))
        grad = float(np.median(grads))
        if ratio >= LOW_UPDATE_RATIO or ratio <= 0.0 or grad <= 0.0:
            return None
        if _schedule_annealed(ev) or _converged(ev) or _gradient_fell(ev, ratio, grad):
            return None
        decades_below = float(np.log10(LOW_UPDATE_RATIO / ratio))
        estimate = HEALTHY_UPDATE_RATIO / ratio
        factor = float(np.clip(estimate, MIN_RAISE, MAX_RAISE))
        confidence = found_confidence(0.2 * decades_below)
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
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

    def _from_logs(self, ev: Evidence) -> Finding | None:
        """No update ratio (a log): a creeping or early-stalled training loss at a constant LR.
        A hint (at most 0.4): the LR is never sized against the weights here."""
        state = ev.get("detector_state")
        if ev.get("detector_series") != "train" or state not in LOG_CONFIDENCE:
            return None
        if not lr_never_changed(ev):
            return None  # no LR logged, or a schedule at work (warm-up, decay): its own choice
        drop = loss_drop(ev)
        if drop is None:
            return None
        head, level, fell = drop
        stats = detector_stats(ev)
        if structured_swings(stats) or fell < 0:
            return None  # a loss that bounces (lr_too_high's) or rose is no small step
        if state == "slow":
            # the lower bound of the projected decrease above 0: a significant, consistent fall
            if not finite_or_nan(stats.get("recent_decrease_low")) > 0 or fell >= CREEP_DROP:
                return None
            projected = 1.0 - math.exp(-finite_or_nan(stats.get("recent_decrease")))
            what = (
                f"the training loss creeps down (slow: {projected:.0%} more if run as long again)"
            )
            limit = CREEP_DROP
        else:
            if fell >= EARLY_DROP:
                return None  # it fell before it stalled: not an early plateau
            what = "the training loss stalled before it fell (an early plateau)"
            limit = EARLY_DROP
        grads = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
        healthy = bool(grads.size) and bool(np.all(np.isfinite(grads)))
        if grads.size and not (healthy and float(np.median(grads)) > 0):
            return None  # vanishing or broken gradients are not a small LR
        confidence = min(
            LOG_CONFIDENCE[str(state)] + HEALTHY_GRADS_BONUS * healthy, LOG_MAX_CONFIDENCE
        )
        lrs = latest_lrs(ev)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "update_ratio_median": float("nan"),
                "detector_state": str(state),
                "loss_start": head,
                "loss_now": level,
                "fraction_fallen": 1.0 - level / head,
                "threshold_drop": limit,
                "recent_decrease": finite_or_nan(stats.get("recent_decrease")),
                "grad_norm_median": float(np.median(grads)) if healthy else float("nan"),
                "lr": next(iter(lrs.values())),
                "lr_series": next(iter(lrs)),
                "source": "log",
            },
            step=ev.step,
            summary=f"{what} and fell {1.0 - level / head:.0%} since the start ({head:.3g} → "
            f"{level:.3g}){lr_text(ev)}, constant: possibly a too-small LR (a hint from the loss "
            "alone: this log has no update/weight ratio)",
            remedies=(
                Remedy(
                    "lr_range_test",
                    {},
                    note="no update/weight ratio to size a raise: find the LR with a range test "
                    "(the Guard runs one on a plateau under policy='rescue')",
                ),
            ),
        )
