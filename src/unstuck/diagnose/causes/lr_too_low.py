"""Steps too small: the LR is far below what the model tolerates."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule
from unstuck.diagnose.causes._landscape import NEAR_CONVERGENCE_DROP, loss_drop, recent_median
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import HEALTHY_UPDATE_RATIO, LOW_UPDATE_RATIO, RECENT_POINTS
from unstuck.types import Finding, Remedy

MAX_RAISE = 100.0  # never raise the LR by more than two decades in one action
MIN_RAISE = 2.0
ANNEALED = 0.1  # a schedule at a tenth of its peak LR is annealing on purpose (cosine, step decay)


def _schedule_annealed(ev: Evidence) -> bool:
    """Your own schedule brought the LR a decade or more below its peak: small steps by design."""
    for name in ev:
        if name.startswith("lr/"):
            values = ev.values_of(name)
            values = values[np.isfinite(values)]
            if values.size and values.max() > 0 and values[-1] <= ANNEALED * values.max():
                return True
    return False


def _converged(ev: Evidence) -> bool:
    """The loss fell by the detector's near-convergence drop and the gradient is below its
    noise: small steps are what convergence looks like (``converged``), not a too-small LR."""
    drop = loss_drop(ev)
    snr = recent_median(ev, "grad_snr")
    return drop is not None and snr is not None and drop[2] >= NEAR_CONVERGENCE_DROP and snr < 1


class LRTooLow(Rule):
    """The update/weight ratio sits well below 1e-4 while gradients are finite and non-zero."""

    code: ClassVar[str] = "lr_too_low"
    requires: ClassVar[frozenset[str]] = frozenset({"update_ratio", "grad_norm"})
    # Tiny steps with healthy gradients are these causes' symptom, not a too-small LR.
    # A flat landscape or a saddle makes small steps too; their remedies raise the LR as well.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {
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
        ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
        grads = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
        ratios = ratios[np.isfinite(ratios)]
        if ratios.size < 2 or grads.size == 0 or not np.all(np.isfinite(grads)):
            return None
        ratio = float(np.median(ratios))
        grad = float(np.median(grads))
        if ratio >= LOW_UPDATE_RATIO or ratio <= 0.0 or grad <= 0.0:
            return None
        if _schedule_annealed(ev) or _converged(ev):
            return None
        decades_below = float(np.log10(LOW_UPDATE_RATIO / ratio))
        factor = float(np.clip(HEALTHY_UPDATE_RATIO / ratio, MIN_RAISE, MAX_RAISE))
        confidence = float(np.clip(0.6 + 0.2 * decades_below, 0.0, 0.95))
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
            remedies=(Remedy("lr_scale", {"factor": round(factor, 3)}, automatic=True),),
        )
