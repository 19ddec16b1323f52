"""Gradients blow up towards the input, or become non-finite."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule
from unstuck.diagnose.causes.vanishing_gradients import (
    first_last_weight_norms,
    layer_ratio_evidence,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import EXPLODING_LAYER_RATIO
from unstuck.types import Finding, Remedy


class ExplodingGradients(Rule):
    """The first layer's gradient is over 70× the last layer's (AUTOTRAINER's rule)."""

    code: ClassVar[str] = "exploding_gradients"
    requires: ClassVar[frozenset[str]] = frozenset({"grad_norm_per_tensor", "param_names"})
    explanation: ClassVar[str] = (
        "Gradients grow by orders of magnitude from the output back to the input, so the early "
        "layers take huge, erratic steps: the loss spikes or bounces. Typical with deep nets "
        "without normalisation, large initial weights, or recurrent nets over long sequences. "
        "Clip the gradient norm (torch.nn.utils.clip_grad_norm_) and lower the LR; unstuck lowers "
        "the LR automatically under policy='rescue'."
    )

    def check(self, ev: Evidence) -> Finding | None:
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
            confidence=float(np.clip(0.6 + 0.2 * decades, 0.0, 0.95)),
            evidence=layer_ratio_evidence(pair, EXPLODING_LAYER_RATIO),
            step=ev.step,
            summary=f"gradient norm of {first_name} is {ratio:.0f} × that of {last_name}",
            remedies=(
                Remedy("lr_scale", {"factor": 0.3}, automatic=True),
                Remedy("clip_gradients", note="torch.nn.utils.clip_grad_norm_(params, 1.0)"),
            ),
        )
