"""Gradients blow up towards the input, or become non-finite."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.detect.detector import NONFINITE_RUN
from unstuck.diagnose.base import FOUND_CONFIDENCE, Rule, found_confidence
from unstuck.diagnose.causes.vanishing_gradients import (
    first_last_weight_norms,
    layer_ratio_evidence,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import EXPLODING_LAYER_RATIO, RECENT_POINTS
from unstuck.types import Finding, Remedy

# From a log (no per-tensor norms): the global gradient norm over time, read over its latest
# RECENT_POINTS·4 logged values (the window the other rules read grad_norm over).
GROWTH_FACTOR = 2.0  # TheDeepChecker (REFERENCE.md §3): exploding when the norm grows > 2× ...
GROWTH_CHECKS = 5  # ... check to check over 5 checks (its window; "decay < 0.5 over 5 checks")
# AUTOTRAINER's ratio 70 (EXPLODING_LAYER_RATIO) compares the first layer's gradient norm with
# the last one's at one step; here it is adapted to time: a logged norm over 70× the running
# median of the norms logged before it (at least RECENT_POINTS of them). Not AUTOTRAINER's rule.
SPIKE_RATIO = EXPLODING_LAYER_RATIO
# NONFINITE_RUN (the detector's 3 non-finite values in a row mean divergence): an isolated inf
# is a mixed-precision scaler skipping a step; a run of them is the gradient overflowing.


def _longest_nonfinite_run(values: np.ndarray) -> int:
    run = best = 0
    for finite in np.isfinite(values):
        run = 0 if finite else run + 1
        best = max(best, run)
    return best


def _growth(values: np.ndarray) -> float | None:
    """The largest total growth over GROWTH_CHECKS consecutive finite norms that each grew
    more than GROWTH_FACTOR×, or None when no such stretch is in ``values``."""
    best = None
    for end in range(GROWTH_CHECKS, values.size + 1):
        chunk = values[end - GROWTH_CHECKS : end]
        if not np.all(np.isfinite(chunk)) or np.any(chunk[:-1] <= 0):
            continue
        if np.all(chunk[1:] / chunk[:-1] > GROWTH_FACTOR):
            total = float(chunk[-1] / chunk[0])
            best = total if best is None else max(best, total)
    return best


def _spike(history: np.ndarray, first: int) -> tuple[float, float, int] | None:
    """(ratio, running median, index) of the largest norm at or after ``first`` against the
    median of the finite norms before it, or None when no point has RECENT_POINTS before it."""
    best = None
    for i in range(max(first, 0), history.size):
        before = history[:i]
        before = before[np.isfinite(before)]
        value = history[i]
        if before.size < RECENT_POINTS or not np.isfinite(value):
            continue
        median = float(np.median(before))
        if median <= 0:
            continue
        ratio = float(value) / median
        if best is None or ratio > best[0]:
            best = (ratio, median, i)
    return best


class ExplodingGradients(Rule):
    """The first layer's gradient is over 70× the last layer's (AUTOTRAINER's rule)."""

    code: ClassVar[str] = "exploding_gradients"
    requires: ClassVar[frozenset[str]] = frozenset({"grad_norm_per_tensor", "param_names"})
    # From a log: the global gradient norm over time (``_from_global_norm``).
    requires_any: ClassVar[tuple[frozenset[str], ...]] = (frozenset({"grad_norm"}),)
    lr_raise_effect: ClassVar[bool] = True  # an LR raise being judged can blow gradients up
    explanation: ClassVar[str] = (
        "Gradients grow by orders of magnitude from the output back to the input, so the early "
        "layers take huge, erratic steps: the loss spikes or bounces. Typical with deep nets "
        "without normalisation, large initial weights, or recurrent nets over long sequences. "
        "Clip the gradient norm (torch.nn.utils.clip_grad_norm_) and lower the LR; unstuck lowers "
        "the LR automatically under policy='rescue'."
    )

    def check(self, ev: Evidence) -> Finding | None:
        if "grad_norm_per_tensor" not in ev:
            return self._from_global_norm(ev)  # a log: one global norm, no per-tensor ones
        pair = first_last_weight_norms(ev)
        if pair is None:
            return None
        first_name, first, last_name, last = pair
        ratio = first / last
        if ratio <= EXPLODING_LAYER_RATIO:
            return None
        decades = float(np.log10(ratio / EXPLODING_LAYER_RATIO))
        return Finding(
            cause=self.code,
            confidence=found_confidence(0.2 * decades),
            evidence=layer_ratio_evidence(pair, EXPLODING_LAYER_RATIO),
            step=ev.step,
            summary=f"gradient norm of {first_name} is {ratio:.0f} × that of {last_name}",
            remedies=(
                Remedy("lr_scale", {"factor": 0.3}, automatic=True),
                Remedy("clip_gradients", note="torch.nn.utils.clip_grad_norm_(params, 1.0)"),
            ),
        )

    def _from_global_norm(self, ev: Evidence) -> Finding | None:
        """No per-tensor norms (a log): the logged global norm turned non-finite, more than
        doubled check to check over 5 checks, or jumped 70× above its running median, in its
        latest 32 values."""
        if ev.get("detector_series", "train") != "train":
            return None  # the training gradient's business: found once, at the training loss
        steps, history = ev.steps_of("grad_norm"), ev.values_of("grad_norm")
        if history.size == 0:
            return None
        first = max(history.size - RECENT_POINTS * 4, 0)
        recent = history[first:]
        nonfinite = _longest_nonfinite_run(recent)
        growth = _growth(recent)
        spike = _spike(history, first)
        at = int(steps[-1]) if steps.size == history.size and steps.size else ev.step
        if nonfinite >= NONFINITE_RUN:
            confidence = FOUND_CONFIDENCE
            summary = f"{nonfinite} logged gradient norms in a row are non-finite"
        elif spike is not None and spike[0] > SPIKE_RATIO:
            ratio, median, i = spike
            decades = float(np.log10(ratio / SPIKE_RATIO))
            confidence = found_confidence(0.2 * decades)
            if steps.size == history.size:
                at = int(steps[i])
            summary = (
                f"the gradient norm jumped to {history[i]:.3g}, {ratio:.3g} × its running "
                f"median {median:.3g}"
            )
        elif growth is not None:
            decades = float(np.log10(growth / GROWTH_FACTOR ** (GROWTH_CHECKS - 1)))
            confidence = found_confidence(0.2 * decades)
            summary = (
                f"the gradient norm grew more than {GROWTH_FACTOR:g}× from each check to the "
                f"next over {GROWTH_CHECKS} consecutive logged checks ({growth:.3g}× in all)"
            )
        else:
            return None
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "nonfinite_norms_in_a_row": nonfinite,
                "nonfinite_threshold": NONFINITE_RUN,
                "spike_ratio": spike[0] if spike is not None else float("nan"),
                "spike_threshold": SPIKE_RATIO,
                "running_median": spike[1] if spike is not None else float("nan"),
                "growth": growth if growth is not None else float("nan"),
                "growth_factor": GROWTH_FACTOR,
                "growth_checks": GROWTH_CHECKS,
                "event_step": at,
                "source": "log",
            },
            step=ev.step,
            summary=summary + " (the global norm of a log: which layers, it cannot say)",
            remedies=(
                Remedy("lr_scale", {"factor": 0.3}, automatic=True),
                Remedy("clip_gradients", note="torch.nn.utils.clip_grad_norm_(params, 1.0)"),
            ),
        )
