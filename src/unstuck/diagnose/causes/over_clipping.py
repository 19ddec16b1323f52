"""Gradient clipping cuts nearly every step: the clip norm, not the LR, sets the step size."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import MAX_FOUND_CONFIDENCE, Rule, found_confidence
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import ADAPTIVE_OPTIMIZERS, RECENT_POINTS
from unstuck.types import Finding, Remedy

CLIP_RATE = 0.9  # DESIGN.md cause catalog: clip rate > 90 %
PINNED_TOLERANCE = 1e-3  # ours: post-clip norms within 0.1 % of their maximum sit on the threshold
PINNED_SAMPLES = (
    16  # ours: sampled gradient norms needed to call them pinned (2 flushes at defaults)
)
ADAPTIVE_CAP = (
    0.45  # ours: Adam-family steps are scale-invariant, so clipping every step barely slows them
)


class OverClipping(Rule):
    """More than 90 % of steps have their gradient norm cut by ``clip_grad_norm_``."""

    code: ClassVar[str] = "over_clipping"
    requires: ClassVar[frozenset[str]] = frozenset({"grad_norm"})
    uses: ClassVar[frozenset[str]] = frozenset({"clip_rate", "clip_pre_norm", "clip_threshold"})
    explanation: ClassVar[str] = (
        "clip_grad_norm_ rescales the gradient whenever its norm exceeds max_norm. Meant for "
        "rare spikes, it cuts nearly every step when max_norm is far below the typical gradient "
        "norm (a value copied from another model, or max_norm confused with clip_grad_value_): "
        "every SGD step then has length lr × max_norm whatever the gradient says, often far too "
        "small, and the run crawls. Adam-family optimizers divide the scale back out, so for "
        "them this is mostly harmless. What to do: set max_norm near the typical pre-clip norm "
        "(so only spikes are cut), or raise the LR to compensate."
    )

    def check(self, ev: Evidence) -> Finding | None:
        rates = ev.values_of("clip_rate")[-RECENT_POINTS:]
        rates = rates[np.isfinite(rates)]
        pre = ev.values_of("clip_pre_norm")[-RECENT_POINTS:]
        pre = pre[np.isfinite(pre)]
        limit = ev.values_of("clip_threshold")
        if rates.size >= 2:
            rate = float(np.mean(rates))
            threshold = float(limit[-1]) if limit.size else float("nan")
            pre_norm = float(np.median(pre)) if pre.size else float("nan")
            source = "clip_grad_norm_"
        else:
            norms = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
            if norms.size < PINNED_SAMPLES or not np.all(np.isfinite(norms)):
                return None
            top = float(norms.max())
            if top <= 0:
                return None
            rate = float(np.mean(np.abs(norms - top) <= PINNED_TOLERANCE * top))
            threshold, pre_norm, source = top, float("nan"), "pinned gradient norms"
        if rate <= CLIP_RATE:
            return None
        factor = pre_norm / threshold if threshold > 0 else float("nan")
        excess = math.log10(factor) if math.isfinite(factor) and factor > 1 else 0.0
        adaptive = str(ev.get("optimizer_type", "")) in ADAPTIVE_OPTIMIZERS
        confidence = found_confidence(
            0.3 * (rate - CLIP_RATE) / (1 - CLIP_RATE) * min(excess, 1.0),
            0.05 * min(excess, 1.0),
            cap=ADAPTIVE_CAP if adaptive else MAX_FOUND_CONFIDENCE,
        )
        suggestion = pre_norm if math.isfinite(pre_norm) else float("nan")
        summary = f"{rate:.0%} of steps are clipped ({source})"
        if math.isfinite(factor):
            summary += f"; the pre-clip norm {pre_norm:.3g} is {factor:.0f}× max_norm {threshold:g}"
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "clip_rate": rate,
                "threshold": CLIP_RATE,
                "max_norm": threshold,
                "pre_clip_norm_median": pre_norm,
                "pre_over_max": factor,
                "source": source,
                "adaptive_optimizer": adaptive,
            },
            step=ev.step,
            summary=summary,
            remedies=(
                Remedy(
                    "clip_adjust",
                    {"factor": float(min(max(factor, 2.0), 100.0))}
                    if math.isfinite(factor)
                    else {"factor": 10.0},
                    automatic=True,
                    note="applied when the loop clips through guard.clip_grad_norm_",
                ),
                Remedy(
                    "raise_clip_norm",
                    {"max_norm": round(suggestion, 4)} if math.isfinite(suggestion) else {},
                    note="set max_norm near the typical pre-clip gradient norm so only spikes "
                    "are cut",
                ),
            ),
        )
