"""A few samples stay confidently wrong: mislabelled data holds most of the loss."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._data import (
    FLAT_CHANGE,
    HARD_MAX_WRONG,
    MAX_SUBSET_FRACTION,
    MIN_GROUP_SAMPLES,
    MIN_NOISE_FRACTION,
    MOST_LOSS_SHARE,
    PURE_CLASS,
    UNLEARNED_LOSS,
    group_reading,
    ramp,
)
from unstuck.diagnose.causes._landscape import LEVEL_POINTS
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

# The second reading: the training loss stands well above the loss on held-out data. Noisy
# training labels cost loss on the training set that clean validation labels do not, while
# overfitting, every other fault of the zoo and healthy training put the training loss at or
# below the validation loss (a run stuck at chance: about equal). Calibrated once on the fault
# zoo's train split (docs/zoo.md; the latest 64 training losses over the latest 3 evaluations,
# at the end of every classification run of the quick plan): healthy runs and the mutants of
# every other operator stood at 0.17-1.08, the label-noise mutants (25-48 % of the labels
# moved) at 1.47-2.4; 1.25 is the geometric midpoint of 1.08 and 1.47, rounded. Regularisation
# that only acts in training mode (dropout, augmentation) also lifts the training loss, so the
# unlearned samples must also be class-mixed, flat and often confidently wrong, which a hard
# subset is not (HARD_MAX_WRONG).
TRAIN_OVER_VAL = 1.25
VAL_POINTS = 3  # the latest evaluations: a recent level, robust to one noisy evaluation


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
        found = self._wrong_group(ev, g)
        return found if found is not None else self._train_above_val(ev)

    def _wrong_group(self, ev: Evidence, g: dict[str, float]) -> Finding | None:
        """A small group of samples worse than chance holds most of the loss."""
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
        ids = _wrong_ids(ev)
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

    def _train_above_val(self, ev: Evidence) -> Finding | None:
        """The training loss stays well above the validation loss, with a flat, class-mixed
        group of unlearned samples that are often worse than chance."""
        val = ev.values_of("val_loss")[-VAL_POINTS:]
        train = ev.values_of("loss")[-LEVEL_POINTS:]
        val, train = val[np.isfinite(val)], train[np.isfinite(train)]
        if val.size < VAL_POINTS or train.size < LEVEL_POINTS:
            return None
        val_level, train_level = float(np.median(val)), float(np.median(train))
        if not val_level > 0 or train_level < TRAIN_OVER_VAL * val_level:
            return None
        u = group_reading(ev, "unlearned", "purity")
        if u is None or u["n"] < MIN_GROUP_SAMPLES:
            return None
        if u["change"] <= FLAT_CHANGE or u["fraction"] < MIN_NOISE_FRACTION:
            return None  # still being learned, or a handful of outliers
        if u["purity"] > PURE_CLASS or u["wrong_of_unlearned"] <= HARD_MAX_WRONG:
            return None  # one class (class_imbalance), or unsure rather than wrong (hard_subset)
        ratio = train_level / val_level
        confidence = found_confidence(0.2 * ramp(ratio, TRAIN_OVER_VAL, 2 * TRAIN_OVER_VAL))
        ids = _wrong_ids(ev)
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "reading": "train_above_val",
                "train_loss": train_level,
                "val_loss": val_level,
                "train_over_val": ratio,
                "threshold": TRAIN_OVER_VAL,
                "unlearned_fraction": u["fraction"],
                "unlearned_purity": u["purity"],
                "wrong_of_unlearned": u["wrong_of_unlearned"],
                "change_last_pass": u["change"],
                "ids": ids,
            },
            step=ev.step,
            summary=f"the training loss ({train_level:.3g}) stays {ratio:.1f}x the validation "
            f"loss ({val_level:.3g}); {u['fraction']:.0%} of the training samples, of every "
            f"class, stay unlearned and {u['wrong_of_unlearned']:.0%} of them worse than "
            "chance: the training labels look noisier than the validation labels",
            remedies=(
                Remedy(
                    "inspect_samples",
                    {"ids": ids},
                    automatic=False,
                    note="check the training labels (and how they are paired with inputs) "
                    "against the validation set's; relabel, or use a noise-robust loss",
                ),
            ),
        )


def _wrong_ids(ev: Evidence) -> list[int]:
    """The ids of the highest-loss worse-than-chance samples (up to 20), to inspect."""
    ids = ev["sample_groups"].get("wrong_ids", [])
    return [int(i) for i in ids] if isinstance(ids, list) else []
