"""Shared readings for the log-level evidence paths (not a rule: the name starts with ``_``).

A log another tool wrote (``unstuck analyze``) holds the training and validation loss, the LR
of each group and at best a global gradient norm: none of the update/weight ratios, gradient
SNR or per-tensor norms the Guard measures. Some rules fall back on a weaker reading of those
series when their main inputs are absent (``Rule.requires_any``); these helpers are what they
share. Docs: the "From logs" section of each cause's page, and docs/analyze.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from unstuck.detect.detector import OSCILLATION_AUTOCORR, OSCILLATION_SIGMA
from unstuck.diagnose.base import ROOT_CONFIDENCE
from unstuck.diagnose.evidence import Evidence

__all__ = [
    "LOG_MAX_CONFIDENCE",
    "detector_stats",
    "finite_or_nan",
    "latest_lrs",
    "lr_never_changed",
    "lr_text",
    "structured_swings",
]

# A reading from the loss shape alone is a hint, not an alarm: it stays below the bar at which a
# finding is acted on and explains away its symptoms (as converged and capacity_limit do), since
# the rules that would tell the other explanations apart cannot run on a log.
LOG_MAX_CONFIDENCE = ROOT_CONFIDENCE - 0.05  # ours, global: just below the "problem" bar


def _lr_names(ev: Evidence) -> list[str]:
    return sorted(name for name in ev if name.startswith("lr/"))


def latest_lrs(ev: Evidence) -> dict[str, float]:
    """The latest finite value of every ``lr/<group>`` series (empty when the log has none)."""
    out = {}
    for name in _lr_names(ev):
        values = ev.values_of(name)
        values = values[np.isfinite(values)]
        if values.size:
            out[name] = float(values[-1])
    return out


def lr_never_changed(ev: Evidence) -> bool:
    """Some LR is known and no ``lr/<group>`` series ever changed its value: a constant LR, no
    schedule at work (no warm-up, no decay) over the kept history."""
    seen = False
    for name in _lr_names(ev):
        values = ev.values_of(name)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        seen = True
        if float(values.max()) != float(values.min()):
            return False
    return seen


def lr_text(ev: Evidence) -> str:
    """`` at LR 0.1 (lr/0)`` for the summary; empty when the log holds no LR."""
    lrs = latest_lrs(ev)
    if not lrs:
        return ""
    shown = ", ".join(f"{v:.3g} ({k})" for k, v in list(lrs.items())[:3])
    more = f" and {len(lrs) - 3} more groups" if len(lrs) > 3 else ""
    return f" at LR {shown}{more}"


def finite_or_nan(value: object) -> float:
    """A number for a finding's evidence: the value as a float, NaN when it is not one."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def detector_stats(ev: Evidence) -> dict[str, Any]:
    """The numbers behind the detector's latest decision (``detector_stats``), or {}."""
    stats = ev.get("detector_stats")
    return stats if isinstance(stats, dict) else {}


def structured_swings(stats: dict[str, Any]) -> bool:
    """The detector's own oscillation test on its latest numbers: a spread above
    ``OSCILLATION_SIGMA`` with a lag-1 autocorrelation above ``OSCILLATION_AUTOCORR`` in
    magnitude, between bins or inside them. The detector reports ``oscillating`` only while no
    plateau is open; on an open plateau the same swings leave it at ``plateau`` (a loss that
    bounces on a floor), and this reads them there."""
    between = (
        finite_or_nan(stats.get("spread")) > OSCILLATION_SIGMA
        and abs(finite_or_nan(stats.get("autocorr"))) > OSCILLATION_AUTOCORR
    )
    within = (
        finite_or_nan(stats.get("within_spread")) > OSCILLATION_SIGMA
        and abs(finite_or_nan(stats.get("within_autocorr"))) > OSCILLATION_AUTOCORR
    )
    return bool(between or within)
