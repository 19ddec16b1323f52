"""Weight decay dominates the data gradient and shrinks the weights."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.evidence import Evidence
from unstuck.diagnose.thresholds import RECENT_POINTS
from unstuck.types import Finding, Remedy

DECAY_RATIO = 1.0  # DESIGN.md cause catalog: ‖decay term‖ / ‖data gradient‖ > 1
# At the equilibrium an over-regularized run settles in, λθ = −∇L exactly (ratio 1 against the
# mean data gradient ‖G‖); the noisy estimate of ‖G‖ from grad_snr straddles it, so the rule
# accepts half of it.
BALANCE = 0.5  # ours: within the grad_snr estimate's noise of the equilibrium ratio 1
SHRINK = 0.9  # ours: ‖θ‖ below 90 % of its starting norm: decay, not data, sets the scale


def _group_values(ev: Evidence, name: str) -> np.ndarray:
    value = ev.get(name)
    if not isinstance(value, (list, tuple, np.ndarray)):
        return np.zeros(0)
    try:
        return np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.zeros(0)


class OverRegularization(Rule):
    """The weight-decay term matches or outweighs the mean data gradient (DESIGN.md: ratio > 1)
    and the weight norm fell below its starting value."""

    code: ClassVar[str] = "over_regularization"
    requires: ClassVar[frozenset[str]] = frozenset({"weight_norm", "weight_decay", "grad_norm"})
    explanation: ClassVar[str] = (
        "Weight decay pulls every weight towards zero; the data gradient pushes them where the "
        "loss wants. When the decay term (λ·θ, or for AdamW the decoupled step lr·λ·θ) is larger "
        "than the data's pull, the weights shrink until the two balance at a small norm, and the "
        "loss settles well above what the model could reach: an underfit plateau. Common with a "
        "decay meant for AdamW (0.05-0.1) passed to SGD or Adam, where it is an L2 term in the "
        "gradient, or with AdamW and a long, high-LR schedule. What to do: lower weight_decay by "
        "10× (1e-4 to 5e-4 for SGD, 1e-2 to 1e-1 for AdamW), exclude biases and norm layers from "
        "decay, or use AdamW instead of Adam(weight_decay=...)."
    )

    def check(self, ev: Evidence) -> Finding | None:
        decay = _group_values(ev, "weight_decay")
        group_norms = _group_values(ev, "weight_norm_per_group")
        if decay.size == 0 or not np.all(np.isfinite(decay)) or float(decay.max()) <= 0:
            return None
        if group_norms.size != decay.size or not np.all(np.isfinite(group_norms)):
            return None
        decoupled = ev.get("weight_decay_decoupled")
        lrs = _group_values(ev, "weight_decay_lr")
        is_decoupled = isinstance(decoupled, list) and len(decoupled) == decay.size
        if is_decoupled and isinstance(decoupled, list) and any(decoupled):
            # AdamW: compare the decay step lr·λ·‖θ‖ with the whole measured step ‖Δθ‖.
            ratios = ev.values_of("update_ratio")[-RECENT_POINTS:]
            ratios = ratios[np.isfinite(ratios)]
            if ratios.size < 2 or lrs.size != decay.size or not np.all(np.isfinite(lrs)):
                return None
            total = float(np.sqrt(np.sum(group_norms**2)))
            step_decay = float(np.sqrt(np.sum((lrs * decay * group_norms) ** 2)))
            step_total = float(np.median(ratios)) * total
            if step_total <= 0:
                return None
            ratio, kind = step_decay / step_total, "decoupled"
        else:
            grads = ev.values_of("grad_norm")[-RECENT_POINTS * 4 :]
            grads = grads[np.isfinite(grads)]
            if grads.size < 2:
                return None
            grad = float(np.median(grads))
            snr = ev.values_of("grad_snr")[-RECENT_POINTS:]
            snr = snr[np.isfinite(snr) & (snr >= 0)]
            if snr.size:
                # the mean data gradient ‖G‖ = ‖g‖·√(snr/(1+snr)): minibatch noise cannot
                # balance a decay term, only the mean gradient can
                s = float(np.median(snr))
                grad *= math.sqrt(s / (1.0 + s))
            decay_term = float(np.sqrt(np.sum((decay * group_norms) ** 2)))
            if grad <= 0:
                return None
            ratio, kind = decay_term / grad, "L2"
        norms = ev.values_of("weight_norm")
        norms = norms[np.isfinite(norms)]
        if norms.size < 2:
            return None
        initial = float(ev.get("weight_norm_initial", float("nan")))
        # Against the starting norm, not the peak: healthy nets grow their weights from
        # initialisation, and a converged one may shrink a little from its peak.
        peak = initial if math.isfinite(initial) and initial > 0 else float(norms[0])
        now = float(norms[-1])
        shrunk = now / peak if peak > 0 else 1.0
        if ratio < BALANCE * DECAY_RATIO or shrunk > SHRINK:
            return None
        confidence = found_confidence(0.2 * math.log10(ratio / BALANCE), 0.5 * (SHRINK - shrunk))
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "decay_over_gradient": ratio,
                "threshold": DECAY_RATIO,
                "weight_decay": decay.tolist(),
                "decay_kind": kind,
                "weight_norm": now,
                "weight_norm_start": peak,
                "shrink": shrunk,
                "shrink_threshold": SHRINK,
            },
            step=ev.step,
            summary=f"the {kind} weight-decay term is {ratio:.1f}× the data gradient and the "
            f"weight norm fell to {shrunk:.0%} of its starting value ({now:.3g} from {peak:.3g})",
            remedies=(
                Remedy(
                    "lower_weight_decay",
                    {"weight_decay": float(decay.max()) / 10},
                    note="lower weight_decay ×10; exclude biases and norm layers from decay",
                ),
            ),
        )
