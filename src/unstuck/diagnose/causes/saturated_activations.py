"""Saturated sigmoid/tanh units: most pre-activations sit in the flat tails."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import RECENT_POINTS
from unstuck.signals.host import SATURATION_BOUND
from unstuck.types import Finding, Remedy

SATURATED_SHARE = 0.5  # DeepDiagnosis: > 50 % of pre-activations beyond ±5 (REFERENCE.md §3)


class SaturatedActivations(Rule):
    """Over half the pre-activations of a sigmoid/tanh layer lie beyond ±5."""

    code: ClassVar[str] = "saturated_activations"
    requires: ClassVar[frozenset[str]] = frozenset({"act_saturation"})
    symptom_of: ClassVar[frozenset[str]] = frozenset({"input_scale"})
    explanation: ClassVar[str] = (
        "Most inputs to a sigmoid or tanh layer are beyond ±5, where the function is flat: its "
        "derivative is below 0.007 (sigmoid) or 2e-4 (tanh), so almost no gradient passes and "
        "the layers below stop learning. The usual causes are weights initialised too large "
        "(e.g. normal(0, 1) instead of Xavier/Glorot), unnormalized inputs, or a learning rate "
        "that blew the weights up. Use Xavier/Glorot initialisation, normalise the inputs, add "
        "normalisation layers, or switch hidden layers to ReLU-family activations. A sigmoid or "
        "tanh whose output is the model's output is not counted (confident predictions saturate "
        "it by design); functional torch.sigmoid/torch.tanh calls are not seen."
    )

    def check(self, ev: Evidence) -> Finding | None:
        series = ev.values_of("act_saturation")
        series = series[np.isfinite(series)]
        if series.size == 0:
            return None
        share = float(np.median(series[-RECENT_POINTS:]))
        if share <= SATURATED_SHARE:
            return None
        span = 1.0 - SATURATED_SHARE
        confidence = found_confidence((share - SATURATED_SHARE) / span * 0.3, cap=0.9)
        layers: dict[str, Any] = dict(ev.get("act_saturation_layers") or {})
        worst = max(layers, key=lambda k: layers[k]) if layers else "?"
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "saturated_share": share,
                "threshold": SATURATED_SHARE,
                "bound": SATURATION_BOUND,
                "worst_layer": worst,
                "layers": {k: float(v) for k, v in layers.items()},
            },
            step=ev.step,
            summary=f"{share:.0%} of the pre-activations of {worst} lie beyond "
            f"±{SATURATION_BOUND:g} (threshold {SATURATED_SHARE:.0%})",
            remedies=(
                Remedy(
                    "change_architecture",
                    note="Xavier/Glorot init, normalised inputs, norm layers or ReLU-family units",
                ),
            ),
        )
