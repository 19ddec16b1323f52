"""Poor initialization: the activation scale collapses or explodes with depth from the start."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes.dead_relu import DEAD_SHARE
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

# He et al. 2015 §2.2 / Glorot & Bengio 2010: a sound init keeps the per-layer activation
# variance about constant with depth; PyTorch's default init loses at most ~2× in std per layer
# over typical depths, so we flag two decades of drift between the first and the last hidden
# layer as a single global bound (measured here: default-init MLPs/CNNs of depth 3-10 stay
# within 0.07-0.6).
SCALE_DRIFT = 1e-2  # last-hidden / first layer output std below this (or above its inverse)
MIN_LAYERS = 3  # first layer, at least one hidden layer, and the output layer
# The second reading: one layer passes on almost none of the variation of its input. Through a
# default-initialised layer (torch's kaiming_uniform_(a=sqrt(5)): weight std 1/sqrt(3 fan_in))
# the sample-to-sample std of the output shrinks at most ~7x per layer, under a sigmoid (slope
# at most 1/4; measured on default-init MLPs of depth 3-10 on digits and Gaussian inputs:
# 0.13-0.14 per layer, ReLU 0.4-0.6, tanh 0.3-0.6). A drop of 10x or more in one layer takes
# weights an order of magnitude smaller than the default: the input is lost to the biases.
# Dead ReLUs drop the signal as well (negative biases): so the dropping layer's own weights must
# also be LAYER_DROP below torch's default scale (act_scale["first_weight_scale"]).
LAYER_DROP = 10.0
MAX_CONFIDENCE = 0.95  # as vanishing_gradients: a collapse of many decades is near-certain


def _floats(values: Sequence[Any]) -> list[float] | None:
    """The values as floats, or None when one is not a number."""
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _depth_ratio(values: Sequence[Any]) -> float | None:
    """Output std of the last hidden layer over that of the first layer (forward order)."""
    stds = _floats(values)
    if stds is None:
        return None
    if len(stds) < MIN_LAYERS or not all(math.isfinite(s) and s >= 0 for s in stds):
        return None
    first, last_hidden = stds[0], stds[-2]  # the output layer is left out (often zero-init)
    if first <= 0:
        return None
    return last_hidden / first


def _decades_out(ratio: float) -> float:
    """How many decades the ratio lies beyond [SCALE_DRIFT, 1/SCALE_DRIFT] (≤ 0 inside)."""
    if ratio <= 0:
        return 10.0
    return abs(math.log10(ratio)) - abs(math.log10(SCALE_DRIFT))


class PoorInitialization(Rule):
    """At the first sampled forward, layer output std drifts over 100× from first to last hidden."""

    code: ClassVar[str] = "poor_initialization"
    requires: ClassVar[frozenset[str]] = frozenset({"act_scale"})
    explanation: ClassVar[str] = (
        "At the start of training the scale of the layer outputs collapses (or explodes) with "
        "depth: the last hidden layer's output is more than a hundred times smaller (or larger) "
        "than the first layer's. The signal reaching the output is then ~0 (or enormous), the "
        "gradients vanish (or explode) along the same path, and the loss sits at the level of a "
        "constant prediction. Typical causes: weights drawn with a fixed small std such as "
        "normal(0, 0.01) in a deep stack, or with std 1. Use He (Kaiming) initialisation for "
        "ReLU-family layers and Xavier/Glorot for tanh/sigmoid (or LSUV), add normalisation "
        "layers or residual connections. Only Linear/Conv/recurrent/attention modules are "
        "measured, in the order they ran."
    )

    def check(self, ev: Evidence) -> Finding | None:
        scale: Any = ev.get("act_scale")
        if not isinstance(scale, dict):
            return None
        ratio = _depth_ratio(scale.get("first") or [])
        if ratio is None:
            return None
        decades = _decades_out(ratio)
        if decades <= 0:
            return self._layer_drop(ev, scale)
        dead = ev.values_of("act_dead_fraction")
        if dead.size and np.isfinite(dead[0]) and dead[0] >= DEAD_SHARE:
            return None  # units dead from the first batch explain the collapse: dead_relu's case
        direction = "collapses" if ratio < 1 else "explodes"
        confidence = found_confidence(0.1 * decades, cap=MAX_CONFIDENCE)
        latest = _depth_ratio(scale.get("latest") or [])
        layers = list(scale.get("first_layers") or scale.get("layers") or [])
        first_std = [float(v) for v in scale.get("first") or []]
        evidence: dict[str, Any] = {
            "depth_ratio_at_start": ratio,
            "threshold": SCALE_DRIFT,
            "layers": layers,
            "std_at_start": first_std,
            "first_step": int(scale.get("first_step", 0)),
        }
        if latest is not None:
            evidence["depth_ratio_latest"] = latest
        return Finding(
            cause=self.code,
            confidence=float(confidence),
            evidence=evidence,
            step=ev.step,
            summary=f"activation scale {direction} with depth at the start: layer output std "
            f"goes from {first_std[0]:.2g} to {first_std[-2]:.2g} ({ratio:.1e}×, bound "
            f"{SCALE_DRIFT:g}) over {len(first_std) - 1} layers",
            remedies=(
                Remedy(
                    "reinitialize",
                    note="He init for ReLU, Xavier/Glorot for tanh/sigmoid; norm layers, residuals",
                ),
            ),
        )

    def _layer_drop(self, ev: Evidence, scale: dict[str, Any]) -> Finding | None:
        """One hidden layer shrinks the sample-to-sample std of its input by LAYER_DROP or more
        at the first sampled forward: its weights are far below a sound init's."""
        signal = _floats(scale.get("first_signal") or [])
        weights = _floats(scale.get("first_weight_scale") or [])
        if signal is None or weights is None or len(weights) != len(signal):
            return None
        hidden = signal[:-1]  # the output layer is left out (often zero-init or scaled)
        if len(hidden) < 2 or not all(math.isfinite(v) and v >= 0 for v in hidden):
            return None
        drops = [
            (a / b if b > 0 else math.inf, i + 1)
            for i, (a, b) in enumerate(itertools.pairwise(hidden))
            if a > 0 and weights[i + 1] * LAYER_DROP <= 1.0  # NaN (no weight) fails too
        ]
        if not drops:
            return None
        worst, at = max(drops)
        if worst < LAYER_DROP:
            return None
        layers = list(scale.get("first_layers") or scale.get("layers") or [])
        name = layers[at] if at < len(layers) else f"layer {at}"
        decades = math.log10(worst) - math.log10(LAYER_DROP) if math.isfinite(worst) else 3.0
        return Finding(
            cause=self.code,
            confidence=float(found_confidence(0.1 * decades, cap=MAX_CONFIDENCE)),
            evidence={
                "reading": "layer_drop",
                "layer": name,
                "drop": worst if math.isfinite(worst) else -1.0,
                "weight_scale": weights[at],
                "threshold": LAYER_DROP,
                "layers": layers,
                "signal_std_at_start": signal,
                "first_step": int(scale.get("first_step", 0)),
            },
            step=ev.step,
            summary=f"layer {name} passes on 1/{worst:.2g} of its input's sample-to-sample "
            f"variation at the start (bound 1/{LAYER_DROP:g}): its weights are "
            f"{weights[at]:.1g}x torch's default scale, and the input is lost to the biases",
            remedies=(
                Remedy(
                    "reinitialize",
                    note="He init for ReLU, Xavier/Glorot for tanh/sigmoid (no fixed small std)",
                ),
            ),
        )
