"""A few samples stay confidently wrong: mislabelled data holds most of the loss."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._data import (
    FLAT_CHANGE,
    MAX_SUBSET_FRACTION,
    MIN_GROUP_SAMPLES,
    MIN_NOISE_FRACTION,
    MOST_LOSS_SHARE,
    UNLEARNED_LOSS,
    group_reading,
    ramp,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy


class LabelNoise(Rule):
    """Few samples stay worse than chance (CE > ln C) 3 passes running and hold most loss."""

    code: ClassVar[str] = "label_noise"
    requires: ClassVar[frozenset[str]] = frozenset({"sample_groups"})
    # Saturated units freeze confident predictions, wrong ones included: a share of samples
    # stuck worse than chance is then the saturation's symptom, not their labels'.
    symptom_of: ClassVar[frozenset[str]] = frozenset({"class_imbalance", "saturated_activations"})
    explanation: ClassVar[str] = (
        "Most of the remaining loss sits on a small set of samples that the model predicts, "
        "persistently and with confidence, as something other than their label: their "
        "cross-entropy stays above ln C (the loss of a uniform guess over C classes) pass after "
        "pass while the rest of the data is fitted. That is what mislabelled samples look like: "
        "the model learns the true class and the wrong label keeps its loss high; the mean loss "
        "plateaus at the share those samples hold, and driving it lower means memorising the "
        "errors. Inspect the ids unstuck reports (they are the highest-loss ones), relabel or "
        "drop them, or train with a noise-robust loss (label smoothing, generalized cross-"
        "entropy, co-teaching) and judge progress on clean validation data."
    )

    def check(self, ev: Evidence) -> Finding | None:
        g = group_reading(ev, "wrong")
        if g is None:
            return None
        n, fraction, share, median = g["n"], g["fraction"], g["share"], g["median"]
        chance, of_unlearned = g["chance_loss"], g["wrong_of_unlearned"]
        rest, change = g["rest_median"], g["change"]
        if change <= FLAT_CHANGE:  # the group is still being learned
            return None
        if n < MIN_GROUP_SAMPLES or chance <= 0:
            return None
        if not MIN_NOISE_FRACTION <= fraction <= MAX_SUBSET_FRACTION:
            return None
        # Mislabelled, not merely hard: most persistently unlearned samples are worse than chance.
        if share < MOST_LOSS_SHARE or of_unlearned < 0.5 or median <= chance:
            return None
        if rest >= UNLEARNED_LOSS:  # the rest of the data is not learned yet (p(label) < 1/2)
            # Not "a decade below the group": the wrong labels regularise the model, so with a
            # large share of them the rest is learned (p(label) > 1/2) but never fitted 10×
            # lower (issue 24's zoo: 36 % of wine's samples mislabelled, rest at 0.60).
            return None
        margin = median / chance  # 1: just worse than chance; 2: p(label) < 1/C²
        confidence = found_confidence(
            0.2 * ramp(share, MOST_LOSS_SHARE, 0.9), 0.15 * ramp(margin, 1.0, 2.0)
        )
        ids = ev["sample_groups"].get("wrong_ids", [])
        ids = [int(i) for i in ids] if isinstance(ids, list) else []
        evidence: dict[str, Any] = {
            "wrong_fraction": fraction,
            "wrong_loss_share": share,
            "wrong_median_loss": median,
            "chance_loss": chance,
            "change_last_pass": change,
            "rest_median_loss": rest,
            "wrong_of_unlearned": of_unlearned,
            "window_samples": int(n),
            "ids": ids,
        }
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence=evidence,
            step=ev.step,
            summary=f"{fraction:.1%} of samples stay worse than chance (median loss {median:.2f} "
            f"> ln C = {chance:.2f}) for 3 passes and hold {share:.0%} of the loss",
            remedies=(
                Remedy(
                    "inspect_samples",
                    {"ids": ids},
                    automatic=False,
                    note="check these labels; relabel or drop them, or use a noise-robust loss",
                ),
            ),
        )
