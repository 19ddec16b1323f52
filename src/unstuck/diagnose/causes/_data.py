"""Thresholds shared by the data and loss rules, each with its source or rationale on its line."""

from __future__ import annotations

import math
import numbers

from unstuck.detect.detector import EARLY_DROP
from unstuck.diagnose.evidence import Evidence

# The catalog (DESIGN.md) says "a small subset holds most loss": most = more than half.
MOST_LOSS_SHARE = 0.5  # DESIGN.md cause catalog: the group holds "most" (> 1/2) of the loss
# SageMaker Debugger's class_imbalance rule: max/min class count > 10 (REFERENCE.md §3).
IMBALANCE_COUNT_RATIO = 10.0  # SageMaker Debugger ClassImbalance threshold_imbalance=10
UNLEARNED_LOSS = math.log(2.0)  # CE > ln 2: p(label) < 1/2, the sample is not learned yet
ORDER_OF_MAGNITUDE = 10.0  # "swamps" / "much rarer" / "fitted": one decade, the usual meaning of ≫
MIN_GROUP_SAMPLES = 100  # window samples below this: too few ids to speak of a subset's share
MIN_NOISE_FRACTION = 0.01  # below 1 % of the data a "subset" is a handful of outliers, not noise
MIN_HARD_FRACTION = 0.05  # a hard subset is a sizeable group: at least one sample in twenty
MAX_SUBSET_FRACTION = 0.5  # a "subset" is a minority of the data; more is the whole task failing
HARD_MAX_WRONG = 0.25  # hard, not mislabelled: ≥ 3 in 4 of the group do better than chance
PURE_CLASS = 0.5  # a group whose majority is one class is a class problem (class_imbalance)
# "Persistently / plateaus": the group's loss fell less than the detector's "meaningful" 10 % over
# the last pass over the data.
FLAT_CHANGE = -EARLY_DROP  # detector.EARLY_DROP: a fall under 10 % is not meaningful progress
# Data-pipeline thresholds (truncated_data / repeated_data).
MIN_EPOCHS = 2  # nominal epochs (dataset_size draws each) before judging coverage
TRUNCATED_REACH = 0.9  # a tenth or more of the data never seen: far more than a dropped batch
NEW_ID_TOLERANCE = 0.01  # "no new ids": under 1 % of the data first seen in the latest epoch
REPEAT_MULTIPLICITY = 10.0  # each sample drawn ≥ 10× per nominal epoch: an order of magnitude
SAME_IDS_OVERLAP = 0.9  # consecutive epochs share ≥ 90 % of their ids: the same subset again


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None (strings, NaN, inf, missing)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


GROUP_FIELDS = ("fraction", "share", "median", "rest_median", "change")


def group_reading(ev: Evidence, group: str, *extra: str) -> dict[str, float] | None:
    """One group of ``sample_groups`` (``unlearned`` or ``wrong``) as finite numbers, or None.

    Returns ``n``, ``chance_loss`` and ``wrong_of_unlearned`` with the group's own fields
    (``fraction``, ``share``, ``median``, ``rest_median``, ``change`` and any ``extra``) under
    their bare names; None when the evidence is absent or any of them is missing or non-finite.
    """
    groups = ev.get("sample_groups")
    if not isinstance(groups, dict):
        return None
    keys = {"n": "n", "chance_loss": "chance_loss", "wrong_of_unlearned": "wrong_of_unlearned"}
    keys.update({field: f"{group}_{field}" for field in (*GROUP_FIELDS, *extra)})
    out = {}
    for name, key in keys.items():
        value = finite_number(groups.get(key))
        if value is None:
            return None
        out[name] = value
    return out


def ramp(value: float, low: float, high: float) -> float:
    """0 at ``low``, 1 at ``high``, linear and clipped between (either direction)."""
    if high == low:
        return 1.0
    return min(1.0, max(0.0, (value - low) / (high - low)))
