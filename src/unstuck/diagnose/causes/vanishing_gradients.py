"""Early layers receive almost no gradient."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import ROOT_CONFIDENCE, Rule, found_confidence
from unstuck.diagnose.evidence import PER_TENSOR_GRAD_INITIAL, Evidence
from unstuck.diagnose.thresholds import VANISHING_FIRST_NORM, VANISHING_LAYER_RATIO
from unstuck.types import Finding, Remedy

# A gradient ratio that was healthy at the start and collapsed during training is not the
# architecture starving its early layers (Glorot & Bengio 2010 measure vanishing gradients at
# initialisation): units died or saturated on the way (Lu et al. 2019, "Dying ReLU and
# initialization"), and the rule for that root names it. The collapse is reported below the
# confidence at which a finding counts as a root cause, so the ranking never rests on whether
# the cut path left a gradient of exactly 0 or of 1e-9 on one CPU's floating point.
COLLAPSED_CONFIDENCE = ROOT_CONFIDENCE - 0.05


def initial_ratio(ev: Evidence, first: int, last: int) -> float | None:
    """The first/last gradient-norm ratio at the start of the run, if it was recorded."""
    row = ev.get(PER_TENSOR_GRAD_INITIAL)
    if row is None or len(row) <= max(first, last):
        return None
    first_norm, last_norm = float(row[first]), float(row[last])
    if not (np.isfinite(first_norm) and np.isfinite(last_norm)) or last_norm <= 0:
        return None
    return first_norm / last_norm


def first_last_indices(ev: Evidence) -> tuple[int, int] | None:
    """Indices of the first and last weight matrices (ndim ≥ 2), in model order."""
    ndims = ev.get("param_ndims")
    if ndims is None:
        return None
    weights = [i for i, d in enumerate(ndims) if d >= 2]
    if len(weights) < 2:
        return None
    return weights[0], weights[-1]


def first_last_weight_norms(ev: Evidence) -> tuple[str, float, str, float] | None:
    """Gradient norms of the first and last weight matrices (ndim ≥ 2), in model order.

    ``None`` when they are unknown, not finite, or the last one is 0 (no ratio to judge).
    """
    norms = ev.get("grad_norm_per_tensor")
    names = ev.get("param_names")
    indices = first_last_indices(ev)
    if norms is None or names is None or indices is None:
        return None
    row = np.asarray(norms, dtype=np.float64)
    row = np.median(row[-8:], axis=0) if row.ndim == 2 else row
    first, last = indices
    first_norm, last_norm = float(row[first]), float(row[last])
    if not (np.isfinite(first_norm) and np.isfinite(last_norm)) or last_norm <= 0:
        return None
    return names[first], first_norm, names[last], last_norm


def layer_ratio_evidence(
    pair: tuple[str, float, str, float], threshold: float
) -> dict[str, float | str]:
    """The evidence both gradient-flow rules record: the two layers, their norms, the ratio."""
    first_name, first, last_name, last = pair
    return {
        "first_layer": first_name,
        "first_grad_norm": first,
        "last_layer": last_name,
        "last_grad_norm": last,
        "ratio": first / last,
        "threshold": threshold,
    }


class VanishingGradients(Rule):
    """The first layer's gradient is a thousandth of the last layer's and tiny in absolute terms."""

    code: ClassVar[str] = "vanishing_gradients"
    requires: ClassVar[frozenset[str]] = frozenset({"grad_norm_per_tensor", "param_names"})
    # Root causes that starve the early layers of gradient; when one of them is found the
    # vanishing gradient is its symptom and ranks below it.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {"dead_relu", "saturated_activations", "poor_initialization", "input_scale"}
    )
    explanation: ClassVar[str] = (
        "The gradient reaching the first layers is a thousandth of the one at the output or less, "
        "so early layers barely learn and the loss stalls early. Typical with deep stacks of "
        "sigmoid/tanh, poor initialisation, or no normalisation. Fixes: ReLU-family activations, "
        "He/Xavier initialisation, residual connections, BatchNorm/LayerNorm. unstuck reports "
        "this; raising the LR does not fix it."
    )

    def check(self, ev: Evidence) -> Finding | None:
        pair = first_last_weight_norms(ev)
        if pair is None:
            return None
        first_name, first, last_name, last = pair
        ratio = first / last
        if ratio >= VANISHING_LAYER_RATIO or first >= VANISHING_FIRST_NORM:
            return None
        if first == 0.0:
            # Exactly zero is a cut path (dead ReLUs, a detached input, a frozen layer), not a
            # signal shrinking multiplicatively through depth: the rules for those name it.
            return None
        decades = float(np.log10(VANISHING_LAYER_RATIO / max(ratio, 1e-30)))
        # 0.7 at the ratio bound (a tenth above the base), +0.1 per decade below it
        confidence = found_confidence(0.1, 0.1 * decades)
        evidence: dict[str, float | str | bool] = {
            **layer_ratio_evidence(pair, VANISHING_LAYER_RATIO)
        }
        summary = f"gradient norm of {first_name} is {ratio:.1e} × that of {last_name}"
        indices = first_last_indices(ev)
        start = initial_ratio(ev, *indices) if indices is not None else None
        if start is not None:
            evidence["ratio_at_start"] = start
            if start >= VANISHING_LAYER_RATIO:
                evidence["collapsed_during_training"] = True
                confidence = min(confidence, COLLAPSED_CONFIDENCE)
                summary += (
                    f", down from {start:.1e} at the start: the path collapsed during training "
                    "(dead or saturated units upstream?)"
                )
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence=evidence,
            step=ev.step,
            summary=summary,
            remedies=(
                Remedy("change_architecture", note="ReLU/GELU, He init, residuals, norm layers"),
            ),
        )
