"""Shared readings for the loss-landscape and end-state rules (not a rule: the name starts
with ``_``, so discovery skips it)."""

from __future__ import annotations

import math
import pkgutil
from pathlib import Path
from typing import Any

import numpy as np

from unstuck.detect.detector import NEAR_CONVERGENCE_DROP
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import RECENT_POINTS
from unstuck.signals.host import classify
from unstuck.types import Remedy

__all__ = [
    "FLAT_STATES",
    "GL_THRESHOLD",
    "HEAD_POINTS",
    "LEVEL_POINTS",
    "NEAR_CONVERGENCE_DROP",
    "NOISE_SNR",
    "VAL_POINTS",
    "curvature",
    "effective_step",
    "generalization_loss",
    "known_causes",
    "landscape",
    "loss_drop",
    "momentum_remedies",
    "recent_median",
]

# Prechelt 1998 ("Early stopping — but when?"): GL(t) = 100·(E_va(t)/E_opt(t) − 1); the
# criterion GL_α stops at GL > α, with α = 5 among the ones he benchmarks.
GL_THRESHOLD = 0.05  # Prechelt 1998: GL_5, validation 5 % above its best
# Mahsereci et al. 2017 / McCandlish et al. 2018: the gradient is indistinguishable from its
# minibatch noise when ‖G‖² < tr Σ / B, i.e. grad_snr < 1.
NOISE_SNR = 1.0  # Mahsereci et al. 2017: gradient below its own noise
FLAT_STATES = frozenset({"plateau", "hidden_progress"})  # the detector's "loss is flat" states
HEAD_POINTS = 8  # loss points averaged for the starting level: a median, not one noisy step
LEVEL_POINTS = 64  # loss points for the current level: about one flush-window-and-a-bit
VAL_POINTS = 3  # validation points for the current level: a median of 3 ignores one outlier


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def recent_median(ev: Evidence, name: str, n: int = RECENT_POINTS) -> float | None:
    """Median of the latest ``n`` finite points of a series, or None."""
    values = ev.values_of(name)[-n:]
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def curvature(ev: Evidence) -> dict[str, float] | None:
    """The probe's numbers when it ran and succeeded, else None."""
    probe = ev.get("curvature")
    if not isinstance(probe, dict) or probe.get("status") != "ok":
        return None
    out = {}
    for key in ("lambda_max", "lambda_min", "grad_norm", "loss", "param_norm"):
        value = _finite(probe.get(key))
        if value is None:
            return None
        out[key] = value
    step = _finite(probe.get("step_size"))
    if step is not None:
        out["step_size"] = step
    return out


def effective_step(ev: Evidence, probe: dict[str, float]) -> float | None:
    """The step size the optimizer actually takes per unit gradient, η = ‖Δθ‖ / ‖g‖.

    ‖Δθ‖ = update_ratio × ‖θ‖ (‖θ‖ from the probe). For SGD this is the LR; for adaptive
    optimizers it is their effective, preconditioned LR, which the nominal LR is not. Falls
    back on the probe's own ``step_size`` when the run has no update ratios.
    """
    ratio = recent_median(ev, "update_ratio")
    grad = recent_median(ev, "grad_norm", RECENT_POINTS * 4)
    if ratio is not None and grad is not None and ratio > 0 and grad > 0:
        eta = ratio * probe["param_norm"] / grad
        if math.isfinite(eta) and eta > 0:
            return eta
    return probe.get("step_size")


def landscape(ev: Evidence) -> tuple[str, dict[str, float], float | None] | None:
    """What the curvature probe makes of this stall: (``classify``'s verdict, the probe's
    numbers, the effective step η), or None when no probe succeeded."""
    probe = curvature(ev)
    if probe is None:
        return None
    eta = effective_step(ev, probe)
    kind = classify(
        probe["lambda_max"],
        probe["lambda_min"],
        probe["grad_norm"],
        probe["loss"],
        eta,
        snr=recent_median(ev, "grad_snr"),
    )
    return kind, probe, eta


def loss_drop(ev: Evidence) -> tuple[float, float, float] | None:
    """(start level, current level, natural-log drop) of the training loss, or None.

    The start is the median of the first ``HEAD_POINTS`` kept points (the evidence keeps the
    latest 4,096), the current level the median of the latest ``LEVEL_POINTS``. Needs a
    positive loss (a log scale); a loss that can be ≤ 0 gets None.
    """
    levels = loss_levels(ev, HEAD_POINTS + LEVEL_POINTS // 2)
    if levels is None:
        return None
    head, level = levels
    return head, level, math.log(head / level)


def loss_levels(ev: Evidence, min_points: int) -> tuple[float, float] | None:
    """(start level, current level) of the training loss: the start is ``loss_initial`` or the
    median of the first ``HEAD_POINTS`` finite points, the current level the median of the
    latest ``LEVEL_POINTS``. None with fewer than ``min_points`` finite points or a level ≤ 0."""
    values = ev.values_of("loss")
    values = values[np.isfinite(values)]
    if values.size < min_points:
        return None
    initial = ev.get("loss_initial")
    head = (
        float(initial)
        if isinstance(initial, (int, float)) and math.isfinite(initial)
        else float(np.median(values[:HEAD_POINTS]))
    )
    level = float(np.median(values[-LEVEL_POINTS:]))
    if head <= 0 or level <= 0:
        return None
    return head, level


def generalization_loss(ev: Evidence) -> dict[str, float] | None:
    """Prechelt's GL: the current validation level over the best one so far, minus one.

    Also the training loss around the best validation step and now, to tell "train falls,
    validation rises" from both rising.
    """
    steps = ev.steps_of("val_loss")
    values = ev.values_of("val_loss")
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if values.size < VAL_POINTS + 1 or steps.size != values.size:
        return None
    best_at = int(np.argmin(values))
    best = float(values[best_at])
    now = float(np.median(values[-VAL_POINTS:]))
    if best <= 0:
        return None
    out = {
        "val_best": best,
        "val_now": now,
        "best_step": int(steps[best_at]),
        "gl": now / best - 1.0,
        "val_points": int(values.size),
    }
    lsteps, lvalues = ev.steps_of("loss"), ev.values_of("loss")
    if lsteps.size == lvalues.size and lvalues.size:
        fin = np.isfinite(lvalues)
        lsteps, lvalues = lsteps[fin], lvalues[fin]
        then = lvalues[lsteps <= out["best_step"]][-LEVEL_POINTS:]
        recent = lvalues[-LEVEL_POINTS:]
        if then.size and recent.size:
            out["train_then"] = float(np.median(then))
            out["train_now"] = float(np.median(recent))
    return out


def known_causes(codes: frozenset[str]) -> frozenset[str]:
    """The codes among ``codes`` that have a rule module in this folder.

    ``symptom_of`` may only name registered causes; the catalog is filled in one file at a
    time, so a rule that defers to "every fixable cause" keeps the ones that exist.
    """
    present = {m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])}
    return frozenset(codes & present)


def momentum_remedies(ev: Evidence, why: str) -> tuple[Remedy, ...]:
    """Heavy-ball momentum for plain SGD that runs without it (``optimizer_momentum`` 0), else
    nothing. On a saddle or a flat stretch the gradient keeps its direction, so momentum
    lengthens the steps ×1/(1 − β) while the stable step across steep directions grows
    (Polyak 1964): tried before an LR bump, which raises both."""
    if ev.get("optimizer_momentum") != 0.0:
        return ()
    return (Remedy("add_momentum", {"momentum": 0.9}, automatic=True, note=why),)
