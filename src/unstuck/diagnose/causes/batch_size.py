"""Gradient noise too high (or too low) for the batch: McCandlish et al. 2018's noise scale."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._hurt import loss_hurt, noise_floor_share
from unstuck.diagnose.causes._landscape import (
    NEAR_CONVERGENCE_DROP,
    loss_drop,
)
from unstuck.diagnose.causes._logs import lr_never_changed
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import HIGH_UPDATE_RATIO, RECENT_POINTS
from unstuck.signals.host import NOISE_FLOOR_SHARE
from unstuck.types import Finding, Remedy

# McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training"), eq. 2.11: training
# needs S = S_min·(1 + B_noise/B) steps and E = E_min·(1 + B/B_noise) samples; grad_snr is
# B/B_noise for the simple noise scale B_noise = tr Σ_sample / ‖G‖².
SMALL_FACTOR = 10.0  # McCandlish et al. 2018 eq. 2.11: B < B_noise/10 needs > 10× the minimum steps
LARGE_FACTOR = (
    10.0  # McCandlish et al. 2018 eq. 2.11: B > 10·B_noise spends > 10× the minimum samples
)
SMALL_CAP = 0.9  # ours: a noise floor is also what a too-high LR shows (it scales with lr/B)
# Where the loss stalls or crawls. "slow" counts: under heavy minibatch noise the detector cannot
# confirm a flat floor (its interval is wide), so the floor shows as a crawl.
STALL_STATES = frozenset({"plateau", "slow", "oscillating", "hidden_progress"})

LARGE_CONFIDENCE = (
    0.4  # ours: a too-large batch wastes compute but does not stall a run: report only
)


def batch_size_of(ev: Evidence) -> float:
    """The batch size: from input statistics, else samples seen per step (per-sample losses)."""
    stats: Any = ev.get("input_stats")
    if isinstance(stats, dict):
        b = stats.get("batch_size")
        if isinstance(b, (int, float)) and math.isfinite(b) and b > 0:
            return float(b)
    steps, seen = ev.steps_of("samples_seen"), ev.values_of("samples_seen")
    if seen.size >= 2 and steps[-1] > steps[0]:
        return float((seen[-1] - seen[-2]) / max(steps[-1] - steps[-2], 1))
    return float("nan")


class BatchSize(Rule):
    """The batch is far below the gradient noise scale (each step mostly noise) while steps are
    full-size, or far above it (wasted samples)."""

    code: ClassVar[str] = "batch_size"
    requires: ClassVar[frozenset[str]] = frozenset({"grad_snr", "update_ratio"})
    # Noisy labels inflate the gradient noise scale.
    # The batch is the cause only when the network itself is healthy: a noise floor with steps
    # above the healthy update ratio is the LR's (it scales with lr/B); exploding gradients,
    # saturated or dead units and noisy labels make every step noisy whatever the batch (and
    # put the run far from the quadratic bowl the noise-floor estimate assumes).
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {
            "label_noise",
            "lr_too_high",
            "exploding_gradients",
            "saturated_activations",
            "dead_relu",
        }
    )
    explanation: ClassVar[str] = (
        "Each minibatch gradient is the mean gradient plus noise whose variance falls as 1/B. "
        "McCandlish et al. (2018) call B_noise = tr Σ / ‖G‖² the batch at which the two are "
        "equal; unstuck measures ‖G‖² / tr Σ_batch = B / B_noise. Far below it (B < B_noise/10) "
        "every step is mostly noise: with full-size steps the loss bounces on a noise floor "
        "set by lr/B instead of descending. Far above it (B > 10·B_noise) each extra sample "
        "buys little. A converged run also has a gradient below its noise; it is told apart "
        "because its steps have shrunk (update/weight ratio below ~1e-3, a decayed LR or "
        "Adam's normalisation near a minimum), while a too-small batch keeps taking full-size "
        "steps that cancel out. What to do: raise the batch towards B_noise (or accumulate "
        "gradients over several batches), or lower the LR in proportion."
    )

    def check(self, ev: Evidence) -> Finding | None:
        # Far below B_noise is where small-batch training normally runs (McCandlish et al.): it
        # stalls a run only where the noise holds the loss on a floor. SGD settles about
        # η·tr Σ_B / 4 above the minimum (Mandt et al. 2017); with the gradient below its noise
        # (‖g‖² ≈ tr Σ_B) that is a quarter of one step's first-order change η‖g‖², read here
        # as ‖Δθ‖·‖g‖. A floor less than the detector's plateau margin above the minimum is a
        # minimum for all any test can tell (``converged`` or ``capacity_limit``).
        if ev.get("detector_series", "train") != "train":
            return None
        if ev.get("detector_state") not in STALL_STATES:
            return None
        drop = loss_drop(ev)
        if drop is not None and drop[2] >= NEAR_CONVERGENCE_DROP:
            # The loss already fell an order of magnitude: what is left is convergence (its
            # gradient is below its noise by nature), ``converged``'s business.
            return None
        snr = ev.values_of("grad_snr")[-RECENT_POINTS:]
        snr = snr[np.isfinite(snr) & (snr >= 0)]
        ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
        ratios = ratios[np.isfinite(ratios)]
        if snr.size < 2 or ratios.size < 2:
            return None
        b_over_noise = float(np.median(snr))  # B / B_noise
        update = float(np.median(ratios))
        batch = batch_size_of(ev)
        if update > HIGH_UPDATE_RATIO:
            return None  # steps above 1e-1 of the weights: the LR, not the batch (lr_too_high)
        floor_share = noise_floor_share(ev)
        if b_over_noise * SMALL_FACTOR < 1.0:
            if floor_share is None or floor_share < NOISE_FLOOR_SHARE:
                return None
            if loss_hurt(ev, STALL_STATES) is None and not lr_never_changed(ev):
                # A gradient below its noise and a floor the noise holds up are how healthy
                # small-batch training looks while a schedule has yet to anneal its LR (issue
                # 24: a warm-up + cosine ResNet): under a schedule the batch is the cause only
                # when the loss is hurt (stalled near its start, or swinging beyond its noise;
                # a crawl near its start counts, as above). Under a constant LR the floor stays.
                return None
            decades = math.log10(floor_share / NOISE_FLOOR_SHARE)
            confidence = found_confidence(0.3 * decades, cap=SMALL_CAP)
            kind, direction = "small", "below"
        elif b_over_noise > LARGE_FACTOR:
            confidence, kind, direction = LARGE_CONFIDENCE, "large", "above"
        else:
            return None
        noise_scale = batch / b_over_noise if math.isfinite(batch) and b_over_noise > 0 else None
        suggested = int(min(max(noise_scale, 1.0), 1e7)) if noise_scale is not None else None
        factor = 1.0 / b_over_noise if b_over_noise > 0 else float("inf")
        what = f"batch {batch:.0f}" if math.isfinite(batch) else "the batch"
        if kind == "small" and b_over_noise <= 0:
            summary = f"{what}: the mean gradient is lost in its minibatch noise (SNR ≈ 0)"
        elif kind == "small":
            summary = f"{what} is {factor:.0f}× {direction} the gradient noise scale"
        else:
            summary = f"{what} is {b_over_noise:.0f}× {direction} the gradient noise scale"
        if suggested is not None:
            summary += f" (B_noise ≈ {suggested})" if b_over_noise > 0 else ""
        if kind == "small" and floor_share is not None:
            summary += f"; the noise keeps the loss ~{floor_share:.0%} above its floor"
        summary += f", update/weight {update:.1e}"
        accumulate = Remedy(
            "accumulation_change",
            {"factor": float(min(max(round(factor), 2), 8))}
            if math.isfinite(factor)
            else {"factor": 2.0},
            automatic=True,
            note="applied when the Guard owns gradient accumulation (accumulation_steps=)",
        )
        remedy = (
            Remedy(
                "raise_batch_size",
                {"batch_size": suggested} if suggested is not None else {},
                note="raise the batch (or accumulate gradients) towards B_noise, or lower the LR",
            )
            if kind == "small"
            else Remedy(
                "lower_batch_size",
                {"batch_size": suggested} if suggested is not None else {},
                note="a batch near B_noise reaches the same loss with fewer samples",
            )
        )
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "batch_over_noise_scale": b_over_noise,
                "batch_size": batch if math.isfinite(batch) else -1.0,
                "noise_scale": noise_scale if noise_scale is not None else -1.0,
                "update_ratio_median": update,
                "noise_floor_share": floor_share if floor_share is not None else -1.0,
                "kind": kind,
                "small_factor": SMALL_FACTOR,
                "large_factor": LARGE_FACTOR,
            },
            step=ev.step,
            summary=summary,
            remedies=(accumulate, remedy) if kind == "small" else (remedy,),
        )
