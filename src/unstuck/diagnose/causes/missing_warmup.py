"""No warm-up: Adam's first full-size steps broke a post-LN Transformer at its start."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.detect.detector import EARLY_DROP
from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import FLAT_STATES, loss_drop, recent_median
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import ELEVATED_UPDATE_RATIO
from unstuck.signals.architecture import untuned_warmup_length
from unstuck.types import Finding, Remedy

# Adam-family optimizers: bias correction makes their first step ≈ lr·sign(g) per weight, the
# step warm-up exists to tame (Liu et al. 2020). RAdam rectifies those steps itself (it *is* a
# warm-up), Adagrad and Adadelta have no β₂ average to settle, so they are left out.
WARMUP_OPTIMIZERS = frozenset({"Adam", "AdamW", "NAdam", "Adamax"})


def _lr_rose(ev: Evidence, since: int) -> bool | None:
    """Whether the effective LR ever rose above where it started (a warm-up ran: the user's
    ``lr/<group>`` schedule or unstuck's own ``lr_multiplier``); None when no LR series reaches
    back to step ``since`` (the history forgot the start)."""
    known = False
    for name in ev:
        if not (name.startswith("lr/") or name == "lr_multiplier"):
            continue
        steps, values = ev.steps_of(name), ev.values_of(name)
        keep = np.isfinite(values)
        steps, values = steps[keep], values[keep]
        if values.size == 0:
            continue
        if float(values.max()) > float(values[0]):
            return True
        known = known or (name.startswith("lr/") and int(steps[0]) <= since)
    return False if known else None


class MissingWarmup(Rule):
    """A post-LN Transformer under an Adam-family optimizer at full LR from step 0, first steps
    ≥ 1 % of the weights, and the training loss still within 10 % of where it started."""

    code: ClassVar[str] = "missing_warmup"
    requires: ClassVar[frozenset[str]] = frozenset(
        {"update_ratio", "loss", "lr/*", "post_norm_transformer_layers"}
    )
    # Full-LR steps before Adam's estimates settled leave damage (attention collapsed, the
    # class prior learnt) a ramp started later does not undo; found early, the ramp restarts.
    restart_remedies: ClassVar[frozenset[str]] = frozenset({"warmup"})
    explanation: ClassVar[str] = (
        "A post-LayerNorm Transformer started at its full learning rate with an Adam-family "
        "optimizer and no warm-up, its first steps moved the weights by more than 1 % of "
        "their size, and the loss never left its starting level. Adam's first steps are about "
        "lr per weight whatever the gradient, while its second-moment estimate rests on a "
        "handful of samples (Liu et al. 2020, RAdam); relative updates that large at the start "
        "are what warm-up exists to prevent (Kosson et al. 2024), and post-LN Transformers "
        "need it: their output-side gradients are large at initialization (Xiong et al. 2020), "
        "and the run can collapse to predicting the class prior. Do: a linear warm-up (Goyal "
        "et al. 2017) — unstuck restarts from the run's first state, when the finding comes "
        "within one horizon of it, with a ramp of Ma & Yarats' untuned 2/(1 − β₂) steps, and "
        "rolls it back if it made things worse; or a pre-LN layout (norm_first=True), RAdam, "
        "or a lower LR."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if ev.get("detector_series", "train") != "train":
            return None
        optimizer = str(ev.get("optimizer_type", ""))
        state = str(ev.get("detector_state", ""))
        if optimizer not in WARMUP_OPTIMIZERS or state not in FLAT_STATES:
            return None
        post_norm = ev.get("post_norm_transformer_layers")
        if not isinstance(post_norm, int) or post_norm < 1:
            # Only there is a missing warm-up known to stall a run at its start. Elsewhere a flat
            # start at full Adam LR is as often a slow start (a GRU on a sequence task sits at
            # chance for hundreds of steps, then learns), which no test at step 50 can tell.
            return None
        steps, ratios = ev.steps_of("update_ratio"), ev.values_of("update_ratio")
        if ratios.size == 0 or steps.size != ratios.size or not math.isfinite(ratios[0]):
            return None
        first = float(ratios[0])  # the run's first sampled step: Adam's sign-like step
        if first <= ELEVATED_UPDATE_RATIO or _lr_rose(ev, int(steps[0])) is not False:
            return None
        drop = loss_drop(ev)
        if drop is None:
            return None
        start, level, _ = drop
        fallen = 1.0 - level / start
        if fallen >= EARLY_DROP:
            return None  # the loss got going: whatever stalls it now, the start did not break it
        decades = math.log10(first / ELEVATED_UPDATE_RATIO)
        confidence = found_confidence(0.2 * decades, cap=0.9)
        snr = recent_median(ev, "grad_snr")
        beta2 = ev.get("optimizer_beta2")
        length = untuned_warmup_length(float(beta2) if isinstance(beta2, (int, float)) else None)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "first_update_ratio": first,
                "first_update_step": int(steps[0]),
                "threshold": ELEVATED_UPDATE_RATIO,
                "loss_start": start,
                "loss_now": level,
                "fallen": fallen,
                "early_drop": EARLY_DROP,
                "beta2": float(beta2) if isinstance(beta2, (int, float)) else float("nan"),
                "warmup_length": length,
                "post_norm_transformer_layers": post_norm,
                "grad_snr": snr if snr is not None else float("nan"),
                "detector_state": state,
                # Adam's steps keep the weights moving on a broken net: not progress to wait on.
                "explains_weight_motion": state == "hidden_progress",
            },
            step=ev.step,
            summary=(
                f"{optimizer} started at full LR with no warm-up: its first step moved the "
                f"weights by {first:.2g} of their norm (above {ELEVATED_UPDATE_RATIO:g}), and the "
                f"loss is still {level:.3g} against {start:.3g} at the start"
            ),
            remedies=(
                Remedy(
                    "warmup",
                    {"length": length},
                    automatic=True,
                    note="from the first state when found early: a ramp of 2/(1 − β₂) steps",
                ),
            ),
        )
