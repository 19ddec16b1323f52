"""Steps too large: the loss bounces on a noise floor or climbs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import HEALTHY_UPDATE_RATIO, HIGH_UPDATE_RATIO, RECENT_POINTS
from unstuck.types import Finding, Remedy

MIN_CUT = 0.01  # at most two decades down in one action
MAX_CUT = 0.5
OSCILLATION_CUT = 0.3  # ≈ 10^-0.5: half a decade when only the loss shape says "too high"


class LRTooHigh(Rule):
    """The update/weight ratio is above 1e-1, or the detector sees oscillation or divergence."""

    code: ClassVar[str] = "lr_too_high"
    requires: ClassVar[frozenset[str]] = frozenset({"update_ratio"})
    explanation: ClassVar[str] = (
        "Each step changes the weights by more than a tenth of their size, or the loss bounces "
        "around a floor (slope signs flip, variance dominates the trend) or climbs. The optimizer "
        "overshoots the valley instead of descending it. Lower the learning rate: unstuck cuts it "
        "by the factor that brings the update/weight ratio towards ~1e-3 (or by ~3x when only "
        "the loss shape is evidence), and rolls the cut back if it made things worse."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if ev.get("detector_series", "train") != "train":
            return None  # a validation loss rising while train falls is overfitting, not the LR
        ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
        ratios = ratios[np.isfinite(ratios)]
        state = str(ev.get("detector_state", ""))
        ratio = float(np.median(ratios)) if ratios.size else float("nan")
        if ratios.size >= 2 and ratio > HIGH_UPDATE_RATIO:
            decades = float(np.log10(ratio / HIGH_UPDATE_RATIO))
            factor = float(np.clip(HEALTHY_UPDATE_RATIO * 10 / ratio, MIN_CUT, MAX_CUT))
            confidence = float(np.clip(0.6 + 0.2 * decades, 0.0, 0.95))
            summary = f"update/weight ratio {ratio:.2g} is above {HIGH_UPDATE_RATIO:g}"
        elif state in ("oscillating", "diverging"):
            factor, confidence = OSCILLATION_CUT, 0.6 if state == "diverging" else 0.5
            summary = f"the loss is {state} (update/weight ratio {ratio:.2g})"
        else:
            return None
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "update_ratio_median": ratio,
                "threshold": HIGH_UPDATE_RATIO,
                "detector_state": state,
                "suggested_factor": factor,
            },
            step=ev.step,
            summary=summary,
            remedies=(Remedy("lr_scale", {"factor": round(factor, 3)}, automatic=True),),
        )
