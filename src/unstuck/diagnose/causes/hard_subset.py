"""A sizeable group of samples stays unlearned while the rest of the data is fitted."""

from __future__ import annotations

from typing import ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._data import (
    FLAT_CHANGE,
    HARD_MAX_WRONG,
    MAX_SUBSET_FRACTION,
    MIN_GROUP_SAMPLES,
    MIN_HARD_FRACTION,
    MOST_LOSS_SHARE,
    ORDER_OF_MAGNITUDE,
    PURE_CLASS,
    UNLEARNED_LOSS,
    group_reading,
    ramp,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy


class HardSubset(Rule):
    """A mixed-class group (≥ 5 %) stays at p(label) < 1/2 for 3 passes, holding most loss."""

    code: ClassVar[str] = "hard_subset"
    requires: ClassVar[frozenset[str]] = frozenset({"sample_groups"})
    symptom_of: ClassVar[frozenset[str]] = frozenset({"label_noise", "class_imbalance"})
    explanation: ClassVar[str] = (
        "The mean loss has stopped falling because a sizeable group of samples, drawn from "
        "several classes, is not being learned: their cross-entropy has stayed above ln 2 (the "
        "model gives their label less than even odds) pass after pass, while the rest of the "
        "data is fitted, so they hold most of the remaining loss. Unlike mislabelled data they "
        "are not confidently wrong (their loss stays below the chance level ln C): the model is "
        "unsure, which is what inputs that lack the information, come from a different source "
        "or need a feature the model cannot build look like. Look at what those samples share "
        "(source, preprocessing, length, resolution); fix their inputs, give the model the "
        "capacity or features they need, or up-weight / curriculum them."
    )

    def check(self, ev: Evidence) -> Finding | None:
        g = group_reading(ev, "unlearned", "purity")
        if g is None:
            return None
        n, fraction, share, median = g["n"], g["fraction"], g["share"], g["median"]
        purity, chance, of_unlearned = g["purity"], g["chance_loss"], g["wrong_of_unlearned"]
        rest, change = g["rest_median"], g["change"]
        if change <= FLAT_CHANGE:  # the group is still being learned
            return None
        if n < MIN_GROUP_SAMPLES or not MIN_HARD_FRACTION <= fraction <= MAX_SUBSET_FRACTION:
            return None
        if share < MOST_LOSS_SHARE or median <= UNLEARNED_LOSS:
            return None
        if of_unlearned > HARD_MAX_WRONG or median >= chance:  # confidently wrong: label_noise
            return None
        if median < ORDER_OF_MAGNITUDE * rest:  # the rest is not fitted: everything still learns
            return None
        if purity >= PURE_CLASS:  # mostly one class: a class problem, not a subset of the data
            return None
        confidence = found_confidence(
            0.25 * ramp(share, MOST_LOSS_SHARE, 0.9),
            0.1 * ramp(fraction, MIN_HARD_FRACTION, 0.2),
            cap=0.9,
        )
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "unlearned_fraction": fraction,
                "unlearned_loss_share": share,
                "unlearned_median_loss": median,
                "chance_loss": chance,
                "change_last_pass": change,
                "rest_median_loss": rest,
                "largest_class_share": purity,
                "worse_than_chance_share": of_unlearned,
                "window_samples": int(n),
            },
            step=ev.step,
            summary=f"{fraction:.0%} of samples (mixed classes, largest {purity:.0%}) stay "
            f"unlearned (median loss {median:.2f}, between ln 2 and ln C = {chance:.2f}) for 3 "
            f"passes and hold {share:.0%} of the loss",
            remedies=(
                Remedy(
                    "inspect_samples",
                    {},
                    automatic=False,
                    note="find what the unlearned samples share; fix their inputs or add "
                    "capacity / features for them",
                ),
            ),
        )
