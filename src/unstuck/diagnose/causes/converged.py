"""A good plateau: the loss fell far, the gradient is below its noise, validation is flat."""

from __future__ import annotations

import math
from typing import ClassVar

from unstuck.diagnose.base import ROOT_CONFIDENCE, Rule
from unstuck.diagnose.causes._landscape import (
    FLAT_STATES,
    GL_THRESHOLD,
    NEAR_CONVERGENCE_DROP,
    NOISE_SNR,
    generalization_loss,
    landscape,
    loss_drop,
    recent_median,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

# A finished run is good news, not an alarm: the finding stays below ROOT_CONFIDENCE so it never
# explains away a fault found with it, never out-ranks one found at ≥ 0.5 and triggers nothing.
MAX_CONFIDENCE = ROOT_CONFIDENCE - 0.05  # ours, global: just below the "problem" bar
SNR_POINTS = 3  # grad_snr comes once per flush: the median of the latest 3 windows


class Converged(Rule):
    """The training loss fell an order of magnitude and its gradient is now below noise."""

    code: ClassVar[str] = "converged"
    requires: ClassVar[frozenset[str]] = frozenset({"loss", "grad_snr", "detector_state"})
    explanation: ClassVar[str] = (
        "The run has reached a good plateau: the training loss fell by more than an order of "
        "magnitude from where it started, the minibatch gradient is now indistinguishable from "
        "its own noise (gradient signal-to-noise below 1, the stopping criterion of Mahsereci "
        "et al. 2017), the validation loss is not rising and the curvature, when probed, says "
        "minimum. There is nothing left for this optimizer to gain at this learning rate. Do: "
        "stop and keep the best checkpoint, or, if you need a lower loss, decay the learning "
        "rate (a smaller step averages the noise) or give the model more capacity or data."
    )

    def check(self, ev: Evidence) -> Finding | None:
        # hidden_progress too: at a noise floor Adam's weights random-walk, which the detector's
        # distance trend reads as motion; the gradient SNR and the loss level decide here.
        # "slow" too: with the gradient below its noise, what progress is left is the noise
        # being averaged away (a decaying LR lowers the floor), not learning.
        if (
            ev.get("detector_state") not in FLAT_STATES | {"slow"}
            or ev.get("detector_series") != "train"
        ):
            return None
        drop = loss_drop(ev)
        snr = recent_median(ev, "grad_snr", SNR_POINTS)
        if drop is None or snr is None:
            return None
        head, level, fell = drop
        if fell < NEAR_CONVERGENCE_DROP or snr >= NOISE_SNR:
            return None
        gl = generalization_loss(ev)
        if gl is not None and gl["gl"] > GL_THRESHOLD:
            return None  # validation rising: that is overfitting, not a finished run
        seen = landscape(ev)
        kind = seen[0] if seen is not None else None
        if kind is not None and kind != "minimum":
            return None  # the probe sees a saddle, a flat region or a noise floor
        # Each independent confirmation (validation flat, curvature a minimum) adds a little.
        confidence = 0.35 + 0.05 * (gl is not None) + 0.05 * (kind == "minimum")
        confidence = min(confidence, MAX_CONFIDENCE)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "loss_start": head,
                "loss_now": level,
                "decades_fallen": fell / math.log(10.0),
                "grad_snr": snr,
                "snr_threshold": NOISE_SNR,
                "generalization_loss": gl["gl"] if gl is not None else float("nan"),
                "curvature": kind or "not probed",
            },
            step=ev.step,
            summary=f"converged: the loss fell {fell / math.log(10.0):.1f} decades "
            f"({head:.3g} → {level:.3g}) and the gradient is below its noise (SNR {snr:.2f} "
            f"< {NOISE_SNR:g})",
            remedies=(
                Remedy("keep_best_and_stop", {}, note="nothing left to gain at this LR"),
                Remedy("lr_decay", {}, note="a smaller step averages the gradient noise"),
            ),
        )
