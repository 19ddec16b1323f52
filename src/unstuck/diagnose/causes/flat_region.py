"""Curvature and gradient both tiny: the optimizer crawls across a flat region."""

from __future__ import annotations

import math
from typing import ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import known_causes, landscape, momentum_remedies
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import FLAT_FELT_CURVATURE
from unstuck.types import Finding, Remedy

MIN_RAISE = 2.0
MAX_RAISE = 100.0  # two decades at most, as lr_too_low; a cliff beyond is caught by verification


GRADIENT_UNIT = 1.0  # ours, global: ‖g‖·‖θ‖/L = 1, the natural unit of a dimensionless gradient


class FlatRegion(Rule):
    """On the plateau the optimizer feels almost no curvature and almost no gradient."""

    code: ClassVar[str] = "flat_region"
    requires: ClassVar[frozenset[str]] = frozenset({"curvature"})
    # A flat region is what saturated units, dead units, vanishing signals or a collapsed
    # initialization look like from the landscape: when one of them is found it is the cause.
    symptom_of: ClassVar[frozenset[str]] = known_causes(
        frozenset(
            {
                "saturated_activations",
                "dead_relu",
                "vanishing_gradients",
                "poor_initialization",
                "precision_underflow",
                "over_regularization",
            }
        )
    )
    explanation: ClassVar[str] = (
        "The loss is flat because the landscape is: the curvature the optimizer feels (its "
        "effective step size times the Hessian's extreme eigenvalues) is two decades below the "
        "stability edge, and one step along the gradient lowers the loss by less than a "
        "thousandth of it. Nothing is wrong with the direction of the steps; they are just far "
        "too short for this region. Do: for plain SGD, add momentum (unstuck tries it first); "
        "raise the learning rate (unstuck applies a bounded bump); use an adaptive optimizer, or "
        "restart from a fresh initialization. If units "
        "are saturated or dead, fix that first: it is usually what made the region flat."
    )

    def check(self, ev: Evidence) -> Finding | None:
        seen = landscape(ev)
        if seen is None:
            return None
        kind, probe, eta = seen
        if eta is None:
            return None  # without a step size nothing can be called flat
        lam_max, lam_min = probe["lambda_max"], probe["lambda_min"]
        if kind != "flat_region":
            return None
        # "Gradient tiny" in the landscape's own units: moving the weights by their own size
        # along the gradient would change the loss by less than the loss itself. A gradient
        # above that unit is healthy, and tiny steps with a healthy gradient are lr_too_low.
        gradient_scale = probe["grad_norm"] * probe["param_norm"] / max(abs(probe["loss"]), 1e-12)
        if gradient_scale >= GRADIENT_UNIT:
            return None
        felt = eta * max(abs(lam_max), abs(lam_min))
        felt_grad = eta * probe["grad_norm"] ** 2 / max(abs(probe["loss"]), 1e-12)
        # 0.6 at the flatness bound, +0.15 per decade below it (both the curvature and the
        # gradient's progress are past their bounds, or classify would not say flat_region).
        decades = math.log10(FLAT_FELT_CURVATURE / max(felt, 1e-30))
        confidence = found_confidence(0.15 * decades, cap=0.9)
        factor = min(max(FLAT_FELT_CURVATURE / max(felt, 1e-30), MIN_RAISE), MAX_RAISE)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "lambda_max": lam_max,
                "lambda_min": lam_min,
                "effective_lr": eta,
                "felt_curvature": felt,
                "felt_gradient": felt_grad,
                "gradient_scale": gradient_scale,
                "threshold": FLAT_FELT_CURVATURE,
            },
            step=ev.step,
            summary=f"flat region: step size × curvature {felt:.1e} is below "
            f"{FLAT_FELT_CURVATURE:g} and one step lowers the loss by {felt_grad:.1e} of it "
            f"(λ_max {lam_max:.2g}, λ_min {lam_min:.2g}, η {eta:.2g})",
            remedies=(
                *momentum_remedies(ev, "×10 the stride along a slope that keeps its direction"),
                Remedy("lr_scale", {"factor": round(factor, 3)}, automatic=True),
                Remedy("warm_restart", {}, note="restart from a fresh initialization"),
            ),
        )
