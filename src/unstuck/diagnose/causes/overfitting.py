"""Train falls, validation rises: the model memorizes its training set."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from unstuck.detect.detector import DEFAULT_MIN_POINTS, FLAT_WINDOW_FACTOR
from unstuck.diagnose.base import ROOT_CONFIDENCE, Rule, found_confidence
from unstuck.diagnose.causes._landscape import GL_THRESHOLD, generalization_loss
from unstuck.diagnose.causes._rise import ALPHA, MAX_POINTS, rise_test
from unstuck.diagnose.evidence import Evidence
from unstuck.types import DetectorState, Finding, Remedy

STRONG_GL = 0.5  # GL of 50 % (Prechelt's largest criterion, GL_5 ×10) earns the top confidence
# A rise read from 5 to 8 evaluations by a rank test is a hint, not an alarm: it stays below the
# bar at which the policy acts (keep the best and stop), since at α = 0.05 one flat series in 20
# would pass the test alone (the GL and training-loss conditions make it rarer still).
SHORT_CONFIDENCE = ROOT_CONFIDENCE - 0.05  # ours, global: just below the "problem" bar
# The validation detector tests a slow rise on trailing windows of FLAT_WINDOW_FACTOR ·
# min_points bins (32 at its defaults); below that it sees only a rise that doubled the loss.
RISE_WINDOW_POINTS = FLAT_WINDOW_FACTOR * DEFAULT_MIN_POINTS


class Overfitting(Rule):
    """The validation loss rose 5 % above its best while the training loss fell: seen by the
    validation detector, or, while that has too few points for a verdict, by an exact rank test
    on the 5 to 8 evaluations there are (``_rise``)."""

    code: ClassVar[str] = "overfitting"
    requires: ClassVar[frozenset[str]] = frozenset({"val_loss", "loss"})
    # Training on a fixed subset or memorising wrong labels is what makes validation rise, and
    # weights random-walking on a gradient-noise floor make it bounce.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {"repeated_data", "truncated_data", "label_noise", "batch_size"}
    )
    # Run at every decision, not only where a detector flags something: a validation series of
    # fewer than min_points evaluations leaves its detector "unknown", a state that runs only
    # the continuous rules. Cheap: it returns at once unless the decision is the validation
    # series', and the short test's null distribution is enumerated once per length (< 0.1 s).
    continuous: ClassVar[bool] = True
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
        if ev.get("detector_series") != "val":
            return None
        if ev.get("detector_state") == DetectorState.UNKNOWN:
            return self._short(ev)
        if ev.get("detector_state") != "diverging":
            return self._between(ev)
        gl = _overfit_gl(ev)
        if gl is None:
            return None
        # 0.6 at GL_5, rising on a log scale to 0.9 at GL = 50 %
        strength = math.log(gl["gl"] / GL_THRESHOLD) / math.log(STRONG_GL / GL_THRESHOLD)
        confidence = found_confidence(0.3 * min(max(strength, 0.0), 1.0))
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence=_gl_evidence(gl),
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

    def _between(self, ev: Evidence) -> Finding | None:
        """More evaluations than the rank test reads, fewer than the detector's rise test
        needs (``RISE_WINDOW_POINTS``): a validation loss evaluated once per epoch for 10 to 30
        epochs would otherwise never show a rise that has not doubled. The rank test reads the
        latest ``MAX_POINTS`` evaluations, a window fixed before looking at the values, and must
        say rising on the window one evaluation earlier too (the detector's rise must also hold
        over consecutive decisions)."""
        values = ev.values_of("val_loss")
        values = values[np.isfinite(values)]
        if not MAX_POINTS < values.size < RISE_WINDOW_POINTS:
            return None
        earlier = rise_test(values[-MAX_POINTS - 1 : -1])
        if earlier is None or not earlier.rising:
            return None
        return self._short(ev, values[-MAX_POINTS:])

    def _short(self, ev: Evidence, window: np.ndarray | None = None) -> Finding | None:
        """Too few evaluations for the validation detector (5 to 8; or the latest 8 of a
        series still too short for its rise test): the exact rank test says the values rise
        (from the first evaluation, or after the best one) at level ``ALPHA``, the latest are
        Prechelt's 5 % above the best and the training loss fell since it."""
        test = rise_test(ev.values_of("val_loss") if window is None else window)
        if test is None or not test.rising:
            return None
        gl = _overfit_gl(ev)
        if gl is None:
            return None
        evidence: dict[str, Any] = {
            **_gl_evidence(gl),
            "val_points": test.points,
            "rise_p_value": test.p_value,
            "alpha": ALPHA,
            "test": "exact Mann-Kendall (whole series; after the best), min-p"
            + ("" if window is None else f", on the latest {MAX_POINTS} evaluations"),
        }
        return Finding(
            cause=self.code,
            confidence=SHORT_CONFIDENCE,
            evidence=evidence,
            step=ev.step,
            summary=f"validation loss rises over its {'latest ' if window is not None else ''}"
            f"{test.points} evaluations (exact rank test "
            f"p = {test.p_value:.3f} ≤ {ALPHA:g}): {gl['val_now']:.3g} is {gl['gl']:.0%} above "
            f"its best {gl['val_best']:.3g} (step {gl['best_step']}) while the training loss "
            f"fell from {gl['train_then']:.3g} to {gl['train_now']:.3g}; too few evaluations "
            "for more than a hint",
            remedies=(
                Remedy(
                    "keep_best_and_stop",
                    {},
                    note=f"keep the weights with the lowest validation loss (step "
                    f"{gl['best_step']}); evaluate more often to confirm",
                ),
                Remedy("regularize", {}, note="weight decay, dropout, augmentation, more data"),
            ),
        )


def _overfit_gl(ev: Evidence) -> dict[str, Any] | None:
    """Prechelt's generalization loss when it says overfitting: above GL_5 while the training
    loss fell since the best validation loss; else ``None``."""
    gl = generalization_loss(ev)
    if gl is None or "train_now" not in gl:
        return None
    if not (gl["gl"] > GL_THRESHOLD and gl["train_now"] < gl["train_then"]):
        return None
    return gl


def _gl_evidence(gl: dict[str, Any]) -> dict[str, Any]:
    """The generalization-loss figures every overfitting finding carries."""
    return {
        "generalization_loss": gl["gl"],
        "threshold": GL_THRESHOLD,
        "val_best": gl["val_best"],
        "val_now": gl["val_now"],
        "best_step": gl["best_step"],
        "train_at_best": gl["train_then"],
        "train_now": gl["train_now"],
    }
