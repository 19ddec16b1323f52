"""Train falls, validation rises: the model memorizes its training set."""

from __future__ import annotations

import math
from typing import ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import GL_THRESHOLD, generalization_loss
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

STRONG_GL = 0.5  # GL of 50 % (Prechelt's largest criterion, GL_5 ×10) earns the top confidence


class Overfitting(Rule):
    """The validation detector sees a rise, 5 % above its best, while the training loss fell."""

    code: ClassVar[str] = "overfitting"
    requires: ClassVar[frozenset[str]] = frozenset({"val_loss", "loss"})
    # Training on a fixed subset or memorising wrong labels is what makes validation rise, and
    # weights random-walking on a gradient-noise floor make it bounce.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {"repeated_data", "truncated_data", "label_noise", "batch_size"}
    )
    explanation: ClassVar[str] = (
        "The training loss keeps falling but the validation loss has turned up: the model now "
        "fits the training set at the expense of unseen data, so further steps make the model "
        "you would ship worse. unstuck uses Prechelt's generalization loss (validation loss over "
        "its best so far, minus one; GL_5 fires above 5 %). Do: keep the checkpoint from the "
        "step with the best validation loss and stop, or regularize (weight decay, dropout, data "
        "augmentation), use more data, or a smaller model."
    )

    def check(self, ev: Evidence) -> Finding | None:
        # Only when the validation detector itself sees a rise: its trend test (a significant
        # projected rise larger than its epsilon) ignores one noisy evaluation or an early bump
        # that the GL ratio alone would take for overfitting.
        if ev.get("detector_series") != "val" or ev.get("detector_state") != "diverging":
            return None
        gl = generalization_loss(ev)
        if gl is None or "train_now" not in gl:
            return None
        if not (gl["gl"] > GL_THRESHOLD and gl["train_now"] < gl["train_then"]):
            return None
        # 0.6 at GL_5, rising on a log scale to 0.9 at GL = 50 %
        strength = math.log(gl["gl"] / GL_THRESHOLD) / math.log(STRONG_GL / GL_THRESHOLD)
        confidence = found_confidence(0.3 * min(max(strength, 0.0), 1.0))
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "generalization_loss": gl["gl"],
                "threshold": GL_THRESHOLD,
                "val_best": gl["val_best"],
                "val_now": gl["val_now"],
                "best_step": gl["best_step"],
                "train_at_best": gl["train_then"],
                "train_now": gl["train_now"],
            },
            step=ev.step,
            summary=f"validation loss {gl['val_now']:.3g} is {gl['gl']:.0%} above its best "
            f"{gl['val_best']:.3g} (step {gl['best_step']}; Prechelt GL > "
            f"{GL_THRESHOLD:.0%}) while the training loss fell from {gl['train_then']:.3g} to "
            f"{gl['train_now']:.3g}",
            remedies=(
                Remedy(
                    "keep_best_and_stop",
                    {},
                    automatic=True,
                    note=f"restore the weights with the lowest validation loss (step "
                    f"{gl['best_step']}) and stop",
                ),
                Remedy("regularize", {}, note="weight decay, dropout, augmentation, more data"),
            ),
        )
