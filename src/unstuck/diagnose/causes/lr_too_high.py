"""Steps too large: the loss bounces on a noise floor or climbs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import FOUND_CONFIDENCE, Rule, found_confidence
from unstuck.diagnose.causes._hurt import STALL_DROP, loss_hurt, noise_floor_share
from unstuck.diagnose.causes._logs import (
    CLIMB_Z,
    LOG_MAX_CONFIDENCE,
    bounce_threshold,
    detector_stats,
    finite_or_nan,
    latest_lrs,
    lr_text,
    read_swings,
    structured_swings,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import (
    ADAPTIVE_OPTIMIZERS,
    ELEVATED_UPDATE_RATIO,
    HEALTHY_UPDATE_RATIO,
    HIGH_UPDATE_RATIO,
    RECENT_POINTS,
)
from unstuck.signals.host import NOISE_FLOOR_SHARE
from unstuck.types import ACTING_CONFIDENCE, Finding, Remedy

MIN_CUT = 0.01  # at most two decades down in one action
MAX_CUT = 0.5
# The detector's states in which a loss is not improving: slow, flat, bouncing or climbing.
NOT_IMPROVING = frozenset({"slow", "plateau", "hidden_progress", "oscillating", "diverging"})
OSCILLATION_CUT = 0.3  # ≈ 10^-0.5: half a decade when only the loss shape says "too high"

# From a log (no update ratio): the detector's state on the training loss, and TheDeepChecker's
# fluctuation check, "> 50 % slope sign flips, window 50" (REFERENCE.md §3): the share of
# consecutive loss slopes (point-to-point differences) that change sign over the latest 50
# points. Independent noise alone flips 2/3 of them, so the share is read only as confirmation
# of the detector's oscillating/diverging call (step-to-step bouncing, the signature of
# overshooting), never on its own.
FLIP_WINDOW = 50  # TheDeepChecker: window of 50 losses
FLIP_SHARE = 0.5  # TheDeepChecker: more than 50 % slope sign flips
# Below the 0.5/0.6 the state earns with update ratios measured: on a log, the rules that would
# claim the bouncing for another cause (per-layer exploding gradients, gradient noise for the
# batch, stale optimizer state) cannot run, so the loss shape names the LR as a hint only.
# A plateau whose swings pass the detector's oscillation test (``structured_swings``: the loss
# bounces on a floor; the detector keeps an open plateau open) reads as oscillating.
LOG_CONFIDENCE = {"oscillating": 0.35, "diverging": 0.4}
FLIP_BONUS = 0.05  # the bouncing is step to step (> 50 % sign flips): capped at LOG_MAX_CONFIDENCE


def slope_sign_flips(values: np.ndarray, window: int = FLIP_WINDOW) -> float | None:
    """Share of consecutive slopes that change sign over the latest ``window`` finite points
    (TheDeepChecker's fluctuation reading); None with fewer points than the window."""
    values = values[np.isfinite(values)][-window:]
    if values.size < window:
        return None
    rising = np.diff(values) > 0  # TheDeepChecker: a slope "rises" when loss[t+1]/loss[t] > 1
    return float(np.count_nonzero(rising[1:] != rising[:-1])) / (rising.size - 1)


# A blow-up: the loss rose an order of magnitude (the usual meaning of "≫") above the untrained
# model's first loss, while the steps were above HIGH_UPDATE_RATIO.
BLOW_UP_RISE = 10.0


def _adaptive_not_improving(ev: Evidence, hurt: bool) -> bool:
    """An adaptive optimizer on a training loss that is not improving and is hurt (``hurt``:
    stalled near its start, climbing or bouncing beyond noise, or held above its floor by the
    steps' noise). Adam's first steps take ratios above 1e-2 in runs that go on to converge, so
    a loss that still falls cleanly clears it. With SGD a high ratio may be a net growing out of
    a small init, which this must not call."""
    if str(ev.get("optimizer_type", "")) not in ADAPTIVE_OPTIMIZERS:
        return False
    return ev.get("detector_state") in NOT_IMPROVING and hurt


def _blow_up(ev: Evidence, ratios: np.ndarray) -> tuple[float, float, float] | None:
    """A past blow-up that the run never recovered from: (peak update ratio, peak loss, first
    loss) when a sampled update ratio went above HIGH_UPDATE_RATIO, the loss rose BLOW_UP_RISE×
    above the first loss (or went non-finite), and the latest losses are not EARLY_DROP below
    that first loss. The units such a step kills and the tiny steps left after it are its
    symptoms (``dead_relu``, ``lr_too_low``), not causes of their own."""
    finite = ratios[np.isfinite(ratios)]
    loss = ev.values_of("loss")
    if finite.size == 0 or loss.size < 2 or not np.isfinite(loss[0]) or loss[0] <= 0:
        return None
    peak_ratio = float(finite.max())
    if peak_ratio <= HIGH_UPDATE_RATIO:
        return None
    first = float(loss[0])
    ok = loss[np.isfinite(loss)]
    peak_loss = float(ok.max()) if ok.size else first
    if ok.size == loss.size and peak_loss < BLOW_UP_RISE * first:
        return None
    recent = ok[-RECENT_POINTS * 8 :]
    if recent.size == 0 or np.log(first / max(float(np.median(recent)), 1e-300)) >= STALL_DROP:
        return None  # it recovered: the loss is now well below where it started
    return peak_ratio, peak_loss, first


class LRTooHigh(Rule):
    """The update/weight ratio is above 1e-1 (above 1e-2 for an adaptive optimizer on a loss
    that is not improving), or the detector sees oscillation or divergence."""

    code: ClassVar[str] = "lr_too_high"
    requires: ClassVar[frozenset[str]] = frozenset({"update_ratio"})
    # From a log: the training loss and the detector's state on it (``_from_loss``).
    requires_any: ClassVar[tuple[frozenset[str], ...]] = (frozenset({"loss", "detector_state"}),)
    # Inputs orders of magnitude off scale make every step huge whatever the LR: the scale is
    # the root (its remedy normalises them), the steps its symptom.
    symptom_of: ClassVar[frozenset[str]] = frozenset({"input_scale"})
    lr_raise_effect: ClassVar[bool] = True  # an LR raise being judged can overshoot by itself
    # The steps taken at a far too high LR leave damage (units pushed dead or into saturation,
    # weights blown up) that a later cut does not undo; found early, the cut restarts.
    restart_remedies: ClassVar[frozenset[str]] = frozenset({"lr_scale"})
    explanation: ClassVar[str] = (
        "Each step changes the weights by more than a tenth of their size (a hundredth with an "
        "Adam-family optimizer, whose step is about lr per weight, on a loss that is not "
        "improving), or the loss bounces "
        "around a floor (slope signs flip, variance dominates the trend) or climbs. The optimizer "
        "overshoots the valley instead of descending it. Lower the learning rate: unstuck cuts it "
        "by the factor that brings the update/weight ratio towards ~1e-3 (or by ~3x when only "
        "the loss shape is evidence), and rolls the cut back if it made things worse."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if ev.get("detector_series", "train") != "train":
            return None  # a validation loss rising while train falls is overfitting, not the LR
        if "update_ratio" not in ev:
            return self._from_loss(ev)  # a log: no framework records update ratios
        ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
        ratios = ratios[np.isfinite(ratios)]
        state = str(ev.get("detector_state", ""))
        explains_motion = False
        # The lower median: with an even count the plain median averages the two middle
        # samples, so one sample taken while the weights are still near a tiny init (a ratio of
        # ~100 that the next sample no longer shows) could carry the verdict alone. The lower
        # median needs half the recent samples above the threshold, as with an odd count.
        ratio = float(np.percentile(ratios, 50, method="lower")) if ratios.size else float("nan")
        hurt = loss_hurt(ev)
        floor = noise_floor_share(ev)
        # Steps above 1e-1 of the weights speak when the loss shows it: hurt, or held above its
        # floor by the noise those steps inject (a healthy SGD run at its noise floor shows
        # such ratios too, with a floor below the detector's margin).
        noisy_floor = floor is not None and floor >= NOISE_FLOOR_SHARE
        hurt_or_floor = hurt is not None or noisy_floor
        blow_up = _blow_up(ev, ev.values_of("update_ratio"))
        if ratios.size >= 2 and ratio > HIGH_UPDATE_RATIO and hurt_or_floor:
            reading = "ratio"
            decades = float(np.log10(ratio / HIGH_UPDATE_RATIO))
            estimate = HEALTHY_UPDATE_RATIO * 10 / ratio
            factor = float(np.clip(estimate, MIN_CUT, MAX_CUT))
            confidence = found_confidence(0.2 * decades)
            summary = f"update/weight ratio {ratio:.2g} is above {HIGH_UPDATE_RATIO:g}"
            # ``estimate``: the whole cut the ratio asks for; past the two-decade cap the engine
            # applies the rest as a follow-up once this step has been verified.
            lr_params = {"factor": round(factor, 3), "estimate": round(float(estimate), 6)}
        elif (
            ratios.size >= 2
            and ratio > ELEVATED_UPDATE_RATIO
            and _adaptive_not_improving(ev, hurt_or_floor)
        ):
            reading = "adaptive"
            # Adam's step is ≈ lr per coordinate whatever the gradient, so its ratio is the LR
            # against the weights' size and scales with the LR: the cut that brings it to the
            # healthy 1e-3 is their quotient. Far too high without warm-up, its first steps can
            # wreck a net that then sits at its starting loss while the steps keep the weights
            # moving (Liu et al. 2020, RAdam; Xiong et al. 2020, post-LN Transformers).
            decades = float(np.log10(ratio / ELEVATED_UPDATE_RATIO))
            estimate = HEALTHY_UPDATE_RATIO / ratio
            factor = float(np.clip(estimate, MIN_CUT, MAX_CUT))
            confidence = found_confidence(0.2 * decades)
            summary = (
                f"update/weight ratio {ratio:.2g} of {ev.get('optimizer_type')} is above "
                f"{ELEVATED_UPDATE_RATIO:g} and the loss is {state or 'not improving'}"
            )
            lr_params = {"factor": round(factor, 3), "estimate": round(float(estimate), 6)}
            explains_motion = state == "hidden_progress"
        elif blow_up is not None:
            reading = "blow_up"
            peak_ratio, peak_loss, first = blow_up
            decades = float(np.log10(peak_ratio / HIGH_UPDATE_RATIO))
            estimate = HEALTHY_UPDATE_RATIO * 10 / peak_ratio
            factor = float(np.clip(estimate, MIN_CUT, MAX_CUT))
            confidence = found_confidence(0.2 * decades)
            summary = (
                f"the loss blew up from {first:.3g} to {peak_loss:.3g} while the update/weight "
                f"ratio reached {peak_ratio:.2g} (above {HIGH_UPDATE_RATIO:g}), and it has not "
                "fallen below where it started since"
            )
            lr_params = {"factor": round(factor, 3), "estimate": round(float(estimate), 6)}
        elif state in ("oscillating", "diverging") and hurt in ("climbing", "bouncing"):
            # The detector's call confirmed beyond minibatch noise: noise alone bounces too.
            reading = "oscillation"
            factor = OSCILLATION_CUT
            confidence = FOUND_CONFIDENCE if state == "diverging" else ACTING_CONFIDENCE
            lr_params = {"factor": round(factor, 3)}
            summary = f"the loss is {state} (update/weight ratio {ratio:.2g})"
        else:
            return None
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "update_ratio_median": ratio,
                "threshold": HIGH_UPDATE_RATIO,
                "detector_state": state,
                "suggested_factor": factor,
                # The weights' motion on the flat loss is this finding's symptom, not hidden
                # progress: the policy need not wait on it (``rescue.policy.Ladder``).
                "explains_weight_motion": explains_motion,
                # Which reading spoke: each is calibrated on its own (``calibration.SCALES``).
                "reading": reading,
            },
            step=ev.step,
            summary=summary,
            remedies=(Remedy("lr_scale", lr_params, automatic=True),),
        )

    def _from_loss(self, ev: Evidence) -> Finding | None:
        """No update ratio (a log): the detector's oscillating/diverging call on the training
        loss (or its oscillation test passing on an open plateau), confirmed by TheDeepChecker's
        slope sign flips; a hint below 0.5."""
        state = str(ev.get("detector_state", ""))
        stats = detector_stats(ev)
        if state == "plateau" and structured_swings(stats):
            shape = "oscillating"
            summary = "the training loss bounces on a plateau (structured swings)"
        elif state in LOG_CONFIDENCE:
            shape = state
            summary = f"the training loss is {state}"
        else:
            return None
        swings = read_swings(ev.values_of("loss"))
        if swings is None or not swings.beyond_noise:
            # Per-step minibatch noise bounces without any LR at fault, and a loss logged to 4
            # decimals flips between two values: neither is an LR the log can blame.
            return None
        flips = slope_sign_flips(ev.values_of("loss"))
        bouncing = flips is not None and flips > FLIP_SHARE
        confidence = min(LOG_CONFIDENCE[shape] + FLIP_BONUS * bouncing, LOG_MAX_CONFIDENCE)
        lrs = latest_lrs(ev)
        if swings.climbs:
            summary += (
                f" (it rose {swings.rise:.3g}, {swings.climb_z:.1f} standard errors of its noise)"
            )
        elif bouncing:
            summary += (
                f" ({flips:.0%} of its slopes flip sign over the latest {FLIP_WINDOW} points)"
            )
        summary += lr_text(ev) + ": the LR may be too high (from the loss alone; this log has "
        summary += "no update/weight ratio)"
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "update_ratio_median": float("nan"),
                "detector_state": state,
                "slope_sign_flips": flips if flips is not None else float("nan"),
                "flip_threshold": FLIP_SHARE,
                "flip_window": FLIP_WINDOW,
                "spread": finite_or_nan(stats.get("spread")),
                "autocorr": finite_or_nan(stats.get("autocorr")),
                "within_spread": finite_or_nan(stats.get("within_spread")),
                "within_autocorr": finite_or_nan(stats.get("within_autocorr")),
                "lr": next(iter(lrs.values())) if lrs else float("nan"),
                "lr_series": next(iter(lrs)) if lrs else "",
                "suggested_factor": OSCILLATION_CUT,
                "climb_z": swings.climb_z,
                "climb_threshold": CLIMB_Z,
                "bounce_rho": swings.bounce_rho,
                "bounce_threshold": bounce_threshold(swings.points),
                "resolution": swings.resolution,
                "source": "log",
                "reading": "log",
            },
            step=ev.step,
            summary=summary,
            remedies=(Remedy("lr_scale", {"factor": OSCILLATION_CUT}, automatic=True),),
        )
