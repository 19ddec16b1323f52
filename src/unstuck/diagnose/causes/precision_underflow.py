"""Low-precision gradients flush to zero, or the loss scaler collapses and skips steps."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import RECENT_POINTS
from unstuck.types import Finding, Remedy

LOW_PRECISION = frozenset({"float16", "bfloat16"})
ZERO_SHARE = 0.5  # ours: over half the gradient entries carry no (or a truncated) signal
MIN_SCALE = (
    1.0  # ours: a GradScaler scale below 1 no longer lifts gradients (torch starts it at 2**16)
)
SKIP_SHARE = 0.5  # ours: a healthy scaler skips ~1 step per growth_interval (2,000)


def _recent_median(ev: Evidence, name: str) -> float:
    values = ev.values_of(name)[-RECENT_POINTS:]
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _low_precision(ev: Evidence) -> list[str]:
    dtypes: Any = ev.get("param_dtypes", {})
    found = []
    if isinstance(dtypes, dict):
        found += [f"{k} parameters" for k, v in dtypes.items() if k in LOW_PRECISION and v > 0]
    if str(ev.get("output_dtype", "")) in LOW_PRECISION:
        found.append(f"{ev.get('output_dtype')} outputs (autocast)")
    if ev.get("grad_scaler") is True:
        found.append("a GradScaler")
    return found


class PrecisionUnderflow(Rule):
    """With fp16/bf16 parameters, autocast or a GradScaler: most gradient entries are zero or
    subnormal, the loss scale collapsed below 1, or most optimizer steps are skipped."""

    code: ClassVar[str] = "precision_underflow"
    requires: ClassVar[frozenset[str]] = frozenset({"param_dtypes"})
    explanation: ClassVar[str] = (
        "float16 cannot hold magnitudes below ~6e-8 (and keeps few bits below ~6e-5): small "
        "gradient values become exactly zero and updates smaller than the weight's last bit "
        "round away, so training stalls although nothing looks broken (Micikevicius et al. "
        "2018). A GradScaler lifts the gradients by a loss scale, but when some op overflows on "
        "every step it halves the scale and skips the step each time, until the scale is so "
        "small that everything underflows. What to do: keep fp32 master weights (torch.autocast "
        "with fp32 parameters instead of model.half()), use a torch.amp.GradScaler with fp16, "
        "prefer bfloat16 where supported, and compute losses and reductions in float32."
    )

    def check(self, ev: Evidence) -> Finding | None:
        precision = _low_precision(ev)
        if not precision:
            return None
        zero = _recent_median(ev, "zero_grad_fraction")
        sub = _recent_median(ev, "subnormal_grad_fraction")
        lost = (zero if math.isfinite(zero) else 0.0) + (sub if math.isfinite(sub) else 0.0)
        frozen = _recent_median(ev, "unchanged_weight_fraction")
        scale = ev.values_of("loss_scale")
        scale_now = float(scale[-1]) if scale.size else float("nan")
        skipped = _recent_median(ev, "skipped_step_share") if ev.get("grad_scaler") else math.nan
        reasons, strength = [], 0.0
        if lost >= ZERO_SHARE:
            reasons.append(f"{lost:.0%} of gradient entries are zero or subnormal")
            strength = max(strength, (lost - ZERO_SHARE) / (1.0 - ZERO_SHARE))
        if math.isfinite(frozen) and frozen >= ZERO_SHARE:
            reasons.append(f"{frozen:.0%} of the 16-bit weights did not change in a step")
            strength = max(strength, (frozen - ZERO_SHARE) / (1.0 - ZERO_SHARE))
        if math.isfinite(scale_now) and scale_now < MIN_SCALE:
            reasons.append(f"the loss scale fell to {scale_now:.2g}")
            decades = math.log10(MIN_SCALE / max(scale_now, 1e-45))
            strength = max(strength, min(decades / 4.0, 1.0))
        if math.isfinite(skipped) and skipped >= SKIP_SHARE:
            reasons.append(f"{skipped:.0%} of steps were skipped")
            strength = max(strength, (skipped - SKIP_SHARE) / (1.0 - SKIP_SHARE))
        if not reasons:
            return None
        confidence = found_confidence(0.3 * strength, 0.05 * (len(reasons) - 1))
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "precision": precision,
                "zero_or_subnormal_share": lost,
                "unchanged_weight_share": frozen if math.isfinite(frozen) else -1.0,
                "loss_scale": scale_now if math.isfinite(scale_now) else -1.0,
                "skipped_step_share": skipped if math.isfinite(skipped) else -1.0,
                "zero_share_threshold": ZERO_SHARE,
                "min_scale": MIN_SCALE,
                "skip_share_threshold": SKIP_SHARE,
            },
            step=ev.step,
            summary=f"low precision ({', '.join(precision)}): " + "; ".join(reasons),
            remedies=(
                Remedy(
                    "fp32_master_weights",
                    note="train fp32 parameters under torch.autocast with a torch.amp.GradScaler"
                    " (or bfloat16) instead of model.half()",
                ),
            ),
        )
