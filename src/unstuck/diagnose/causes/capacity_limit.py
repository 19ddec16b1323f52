"""Plateau at a high loss with healthy dynamics: the model cannot fit more."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import ROOT_CONFIDENCE, Rule
from unstuck.diagnose.causes._landscape import (
    FLAT_STATES,
    GL_THRESHOLD,
    NEAR_CONVERGENCE_DROP,
    NOISE_SNR,
    generalization_loss,
    known_causes,
    landscape,
    loss_drop,
    recent_median,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import HIGH_UPDATE_RATIO, LOW_UPDATE_RATIO, RECENT_POINTS
from unstuck.types import Finding, Remedy

# A model at the best it can do is an end state, like a converged run, and from the loss alone
# it looks the same as a noise floor in the data (irreducible error): it is reported, below the
# "problem" bar, so it never explains away a fault found with it and never out-ranks one.
MAX_CONFIDENCE = ROOT_CONFIDENCE - 0.05  # ours, global: just below the "problem" bar

# Every cause that stalls a run at a high loss for a reason a change of training would fix:
# when one of them is found, the model's capacity is not what is in question.
FIXABLE = frozenset(
    {
        "lr_too_low",
        "lr_too_high",
        "vanishing_gradients",
        "exploding_gradients",
        "dead_relu",
        "saturated_activations",
        "poor_initialization",
        "over_clipping",
        "over_regularization",
        "precision_underflow",
        "nonfinite",
        "stale_optimizer_state",
        "frozen_parameters",
        "truncated_data",
        "repeated_data",
        "label_noise",
        "class_imbalance",
        "hard_subset",
        "batch_size",
        "saddle_point",
        "flat_region",
        "input_scale",
        "loss_component_dominance",
        "rank_desync",
        "output_activation",
    }
)


class CapacityLimit(Rule):
    """The training loss plateaued above a tenth of its start while everything looks healthy."""

    code: ClassVar[str] = "capacity_limit"
    requires: ClassVar[frozenset[str]] = frozenset({"loss", "detector_state"})
    symptom_of: ClassVar[frozenset[str]] = known_causes(FIXABLE)
    explanation: ClassVar[str] = (
        "The training loss has stopped at a high level (it fell less than an order of magnitude "
        "from where it started) although the dynamics look healthy: update/weight ratios in the "
        "normal range, finite non-zero gradients, no saddle or flat region in the curvature "
        "probe (it says minimum), validation no worse than training. The model is at the best "
        "it can do: it is too small or too constrained for the task (high bias). unstuck cannot "
        "tell this from an irreducible noise floor in the data (label noise, a task that is "
        "only partly predictable), so check that first. Do: a wider or deeper model, better "
        "features, less regularization; more steps or a different LR will not help."
    )

    def check(self, ev: Evidence) -> Finding | None:
        # hidden_progress too: at a noise floor Adam's weights random-walk, which the detector's
        # distance trend reads as motion; the gradient SNR and the loss level decide here.
        if ev.get("detector_state") not in FLAT_STATES or ev.get("detector_series") != "train":
            return None
        drop = loss_drop(ev)
        if drop is None:
            return None
        head, level, fell = drop
        if fell >= NEAR_CONVERGENCE_DROP:
            return None  # an order of magnitude gone: a low plateau, converged's business
        ratio = recent_median(ev, "update_ratio")
        if ratio is not None and not (LOW_UPDATE_RATIO <= ratio <= HIGH_UPDATE_RATIO):
            return None  # steps too small or too large: an LR problem, not capacity
        grads = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
        if grads.size and not (np.all(np.isfinite(grads)) and float(np.median(grads)) > 0):
            return None
        gl = generalization_loss(ev)
        if gl is not None and gl["gl"] > GL_THRESHOLD:
            return None  # validation rising: overfitting, the opposite of too little capacity
        seen = landscape(ev)
        kind = seen[0] if seen is not None else None
        if kind is not None and kind != "minimum":
            return None  # the probe sees a saddle, a flat region or a noise floor
        snr = recent_median(ev, "grad_snr", 3)
        if ratio is None and snr is None and kind is None:
            # "Healthy dynamics" is the whole claim, and nothing here measured them (a log from
            # another tool holds the loss and the LR): an LR too low, a dead network or a bug
            # stall a loss the same way, so the log cannot tell, and says nothing.
            return None
        # 0.3 on the plateau and the loss level alone; each independent confirmation adds.
        confidence = 0.3
        confidence += 0.05 * (kind == "minimum")  # the probe found nothing to escape along
        confidence += 0.05 * (snr is not None and snr < NOISE_SNR)  # nothing left in the gradient
        confidence += 0.05 * (ratio is not None)  # the step sizes were checked and are normal
        return Finding(
            cause=self.code,
            confidence=round(min(confidence, MAX_CONFIDENCE), 4),
            evidence={
                "loss_start": head,
                "loss_now": level,
                "fraction_of_start": level / head,
                "threshold_fraction": math.exp(-NEAR_CONVERGENCE_DROP),
                "update_ratio_median": ratio if ratio is not None else float("nan"),
                "grad_snr": snr if snr is not None else float("nan"),
                "curvature": kind or "not probed",
                "generalization_loss": gl["gl"] if gl is not None else float("nan"),
            },
            step=ev.step,
            summary=f"plateau at {level / head:.0%} of the starting loss ({head:.3g} → "
            f"{level:.3g}) with healthy dynamics (update/weight "
            f"{ratio if ratio is not None else float('nan'):.1e}, curvature: "
            f"{kind or 'not probed'}): the model looks too small for the task",
            remedies=(
                Remedy("change_architecture", {}, note="a wider or deeper model, better features"),
            ),
        )
