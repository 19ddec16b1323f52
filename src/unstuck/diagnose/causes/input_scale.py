"""Unnormalized inputs: a feature an order of magnitude or more off unit scale."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

# TheDeepChecker and UMLAUT expect normalized inputs inside [-1, 1] (REFERENCE.md §3 tools);
# we allow an order of magnitude more so standardized data with outliers stays quiet.
INPUT_SCALE_LIMIT = 10.0  # per-feature RMS; LeCun et al. 1998 "Efficient BackProp" §4.3: ~1


class InputScale(Rule):
    """Some input feature's root-mean-square is more than 10 (standardized data has 1)."""

    code: ClassVar[str] = "input_scale"
    requires: ClassVar[frozenset[str]] = frozenset({"input_stats"})
    explanation: ClassVar[str] = (
        "The model's inputs are not normalized: at least one feature's typical magnitude is an "
        "order of magnitude or more above the unit scale that initialisations and default "
        "learning rates assume (LeCun et al., Efficient BackProp). The first layer's "
        "pre-activations and gradients scale with the inputs, so its effective learning rate is "
        "multiplied by the square of that scale: the run oscillates, kills ReLUs, saturates "
        "sigmoids, or must use a learning rate too small for the other layers. Standardize each "
        "feature (subtract the training mean, divide by the training std) or scale to [0, 1] / "
        "[-1, 1]; for images divide by 255 and normalise per channel. Only the first "
        "floating-point tensor passed to the model is read; integer token ids are skipped."
    )

    def check(self, ev: Evidence) -> Finding | None:
        stats: Any = ev.get("input_stats")
        if not isinstance(stats, dict):
            return None
        try:
            scale = float(stats["feature_rms_max"])
        except (KeyError, TypeError, ValueError):
            return None
        if not math.isfinite(scale) or scale <= INPUT_SCALE_LIMIT:
            return None
        decades = math.log10(scale / INPUT_SCALE_LIMIT)
        confidence = found_confidence(0.3 * decades, cap=0.9)  # 0.9 a decade past the limit
        evidence: dict[str, float | int | str] = {"feature_rms_max": scale}
        for key in ("mean", "std", "max_abs", "feature_std_min", "feature_std_max", "batch_size"):
            value = stats.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                evidence[key] = value
        evidence["threshold"] = INPUT_SCALE_LIMIT
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence=evidence,
            step=ev.step,
            summary=f"an input feature has RMS {scale:.3g} (max |x| "
            f"{float(stats.get('max_abs', float('nan'))):.3g}); normalized inputs have ~1, "
            f"threshold {INPUT_SCALE_LIMIT:g}",
            remedies=(
                Remedy(
                    "normalize_inputs",
                    note="standardize each feature with training-set mean and std",
                ),
            ),
        )
