"""Negative curvature with a small gradient: the run sits at a saddle point."""

from __future__ import annotations

import math
from typing import ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import landscape, momentum_remedies
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import SADDLE_RATIO
from unstuck.types import Finding, Remedy

LR_BUMP = 3.0  # ≈ 10^0.5: escape time ∝ 1/(η·|λ_min|), so half a decade shortens it ~3×
STABLE_FELT = 1.0  # after the bump keep η·λ_max ≤ 1, half the GD stability limit 2 (Cohen 2021)


class SaddlePoint(Rule):
    """The Hessian on the plateau has a direction of significant negative curvature."""

    code: ClassVar[str] = "saddle_point"
    requires: ClassVar[frozenset[str]] = frozenset({"curvature"})
    # A tiny initialization puts the weights at the saddle at the origin: that is the root.
    symptom_of: ClassVar[frozenset[str]] = frozenset({"poor_initialization"})
    explanation: ClassVar[str] = (
        "The loss is flat because the weights sit near a saddle point: the gradient is small, "
        "but the Hessian has a direction of clearly negative curvature (its most negative "
        "eigenvalue is a sizeable share of the largest), so the loss would fall if the weights "
        "moved along it. Gradient descent leaves a saddle only as fast as the small component "
        "along that direction grows, at a rate η·|λ_min| per step: symmetric or very small "
        "initializations (deep linear networks, teacher-student committees) show long plateaus "
        "and then a sudden drop. Do: for plain SGD, add momentum (unstuck tries it first: it "
        "speeds the escape ×10 without a longer step across the steep directions); raise the "
        "learning rate for a while (unstuck applies a bounded bump that keeps η·λ_max stable); "
        "add noise; or use a larger, less symmetric initialization. Waiting also works: the "
        "run escapes eventually."
    )

    def check(self, ev: Evidence) -> Finding | None:
        seen = landscape(ev)
        if seen is None:
            return None
        kind, probe, eta = seen
        lam_max, lam_min = probe["lambda_max"], probe["lambda_min"]
        if kind != "saddle_point":
            return None
        ratio = -lam_min / max(abs(lam_max), 1e-30)
        # 0.6 at the threshold ratio, 0.9 when the negative curvature matches the positive one
        strength = math.log10(ratio / SADDLE_RATIO) / math.log10(1.0 / SADDLE_RATIO)
        confidence = found_confidence(0.3 * min(max(strength, 0.0), 1.0))
        remedies = list(
            momentum_remedies(ev, "escape at ×10 the rate, without a larger step across λ_max")
        )
        factor = LR_BUMP
        if eta is not None and lam_max > 0:
            factor = min(LR_BUMP, STABLE_FELT / (eta * lam_max))
        if factor >= 1.5:
            remedies.append(
                Remedy(
                    "lr_scale",
                    {"factor": round(factor, 3)},
                    automatic=True,
                    note="escape along the negative curvature faster",
                )
            )
        remedies.append(
            Remedy(
                "change_initialization",
                {},
                note="break the symmetry: a larger or orthogonal initialization, or momentum",
            )
        )
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "lambda_max": lam_max,
                "lambda_min": lam_min,
                "negative_ratio": ratio,
                "threshold": SADDLE_RATIO,
                "probe_grad_norm": probe["grad_norm"],
                "effective_lr": eta if eta is not None else float("nan"),
            },
            step=ev.step,
            summary=f"negative curvature on the plateau: λ_min {lam_min:.3g} is {ratio:.0%} of "
            f"λ_max {lam_max:.3g} (threshold {SADDLE_RATIO:.0%}), gradient norm "
            f"{probe['grad_norm']:.2g}",
            remedies=tuple(remedies),
        )
