"""A good plateau: the loss fell far, the gradient is below its noise, validation is flat."""

from __future__ import annotations

import math
from typing import Any, ClassVar

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
from unstuck.diagnose.causes._logs import LOG_MAX_CONFIDENCE, latest_lrs, schedule_annealed
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

# A finished run is good news, not an alarm: the finding stays below ROOT_CONFIDENCE so it never
# explains away a fault found with it, never out-ranks one found at ≥ 0.5 and triggers nothing.
MAX_CONFIDENCE = ROOT_CONFIDENCE - 0.05  # ours, global: just below the "problem" bar
SNR_POINTS = 3  # grad_snr comes once per flush: the median of the latest 3 windows
# From a log (no gradient SNR): a flat training loss after it fell an order of magnitude, the
# detector's own near-convergence plateau. Without the SNR a converged run cannot be told from a
# noise floor the LR holds it on, so the reading starts lower than the SNR's (0.35).
LOG_BASE = 0.3  # as capacity_limit's reading from the plateau and the loss level alone


def _confirmations(ev: Evidence) -> tuple[dict[str, Any] | None, str | None, float] | None:
    """Validation and curvature, read the same way on a live run and on a log: ``None`` when
    either rules convergence out (validation rising is overfitting; a saddle, a flat region or
    a noise floor is not a minimum), else what they are and the confidence they add (each
    independent confirmation adds a little)."""
    gl = generalization_loss(ev)
    if gl is not None and gl["gl"] > GL_THRESHOLD:
        return None
    seen = landscape(ev)
    kind = seen[0] if seen is not None else None
    if kind is not None and kind != "minimum":
        return None
    return gl, kind, 0.05 * (gl is not None) + 0.05 * (kind == "minimum")


class Converged(Rule):
    """The training loss fell an order of magnitude and its gradient is now below noise."""

    code: ClassVar[str] = "converged"
    requires: ClassVar[frozenset[str]] = frozenset({"loss", "grad_snr", "detector_state"})
    # From a log: the training loss and the detector's state on it (``_from_loss``).
    requires_any: ClassVar[tuple[frozenset[str], ...]] = (frozenset({"loss", "detector_state"}),)
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
        if "grad_snr" not in ev:
            return self._from_loss(ev)  # a log: no gradient SNR
        drop = loss_drop(ev)
        snr = recent_median(ev, "grad_snr", SNR_POINTS)
        if drop is None or snr is None:
            return None
        head, level, fell = drop
        if fell < NEAR_CONVERGENCE_DROP or snr >= NOISE_SNR:
            return None
        confirmed = _confirmations(ev)
        if confirmed is None:
            return None
        gl, kind, bonus = confirmed
        confidence = 0.35 + bonus
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
                Remedy(
                    "keep_best_and_stop",
                    {},
                    automatic=True,
                    note="nothing left to gain at this LR",
                ),
                Remedy("lr_decay", {}, note="a smaller step averages the gradient noise"),
            ),
        )

    def _from_loss(self, ev: Evidence) -> Finding | None:
        """No gradient SNR (a log): a plateau, with no trend, after the loss fell an order of
        magnitude (the detector's near-convergence kind); validation not rising; and the logged
        LR, if any, not annealed to a tenth of its peak.

        Not named under an annealed LR: at a tenth of the peak a step can lower the loss by a
        tenth of what it could (per step about LR·‖g‖²), so a linear or cosine schedule running
        out to 0 flattens any loss, at a minimum or not. From the loss alone the two cannot be
        told apart (the live reading can: its gradient SNR says whether the gradient is below
        its noise); ``unstuck analyze`` says so in a note instead (docs/causes/converged.md).
        """
        if ev.get("detector_state") not in FLAT_STATES:
            return None  # "slow" counts only when the SNR says the progress left is noise
        lrs = latest_lrs(ev)
        if lrs and all(lr == 0 for lr in lrs.values()):
            return None  # an LR of 0 takes no step: flat by construction, not converged
        if schedule_annealed(ev) is not None:
            return None  # the schedule ran out: flat by design, which the loss cannot tell apart
        drop = loss_drop(ev)
        if drop is None:
            return None
        head, level, fell = drop
        if fell < NEAR_CONVERGENCE_DROP:
            return None  # a higher plateau is capacity_limit's business
        confirmed = _confirmations(ev)
        if confirmed is None:
            return None
        gl, kind, bonus = confirmed
        confidence = LOG_BASE + bonus
        confidence = min(confidence, MAX_CONFIDENCE, LOG_MAX_CONFIDENCE)
        decades = fell / math.log(10.0)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "loss_start": head,
                "loss_now": level,
                "decades_fallen": decades,
                "grad_snr": float("nan"),
                "snr_threshold": NOISE_SNR,
                "generalization_loss": gl["gl"] if gl is not None else float("nan"),
                "curvature": kind or "not probed",
                "source": "log",
            },
            step=ev.step,
            summary=f"looks converged: the training loss fell {decades:.1f} decades ({head:.3g} "
            f"→ {level:.3g}) and is flat (from the loss alone: without a gradient SNR this "
            "cannot be told from a noise floor that a smaller LR would lower)",
            remedies=(
                Remedy("keep_best_and_stop", {}, note="if the loss is as low as you need"),
                Remedy("lr_decay", {}, note="a smaller step lowers a noise floor"),
            ),
        )
