"""One loss term swamps the others: the smaller terms stay where they started."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from unstuck.detect.detector import EARLY_DROP
from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._data import (
    MOST_LOSS_SHARE,
    ORDER_OF_MAGNITUDE,
    finite_number,
    ramp,
)
from unstuck.diagnose.causes._hurt import STALLED_STATES
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import COMPONENT_PREFIX
from unstuck.types import Finding, Remedy

RECENT_STEPS = 50  # one default flush of per-step component values: a robust recent median
STALLED_SHARE = 0.5  # a term still at ≥ half its starting value has not been learned
# The second reading, a term served at the others' expense: it fell an order of magnitude
# (ORDER_OF_MAGNITUDE) while another has not fallen the detector's meaningful 10 % (EARLY_DROP)
# below its start and holds most (MOST_LOSS_SHARE) of the loss, on a stalled loss. A large
# term's gradient can pin the model where it is zero (a logit penalty summed over the batch
# holds the logits at 0) and then be small itself, so the values no longer show which term
# ruled. The total loss fell (the served term fell), so the start-relative hurt gate of
# causes/_hurt.py cannot see it; the unmoved term is that term's own "stalled near its start".
UNMOVED_SHARE = 1.0 - EARLY_DROP
UNMOVED_RISE = 1.0 + EARLY_DROP  # nor risen 10 % above it: a term that grew did move
# The served reading also speaks on a crawl ("slow"): the unmoved term is the stall itself, and
# the total still falls only because the served term does. Not on "improving".
SERVED_STATES = STALLED_STATES | {"slow"}


def _reweight(dominant: str, ratio: float, note: str) -> Remedy:
    """The remedy every reading names: weigh the terms again (advice, not an action)."""
    return Remedy(
        "reweight_loss_terms",
        {"dominant": dominant, "ratio": round(ratio, 3)},
        automatic=False,
        note=note,
    )


class LossComponentDominance(Rule):
    """One term is ≥ 10× the sum of the others, which still sit at ≥ half their start value."""

    code: ClassVar[str] = "loss_component_dominance"
    requires: ClassVar[frozenset[str]] = frozenset({"loss_components_start"})
    # A term on the wrong scale from the first step that grew first and took the loss to
    # inf/NaN (reading ``blew_up``) is the root of the non-finite loss and of the LR that was
    # too high for it.
    explains: ClassVar[frozenset[str]] = frozenset({"nonfinite", "lr_too_high"})
    explanation: ClassVar[str] = (
        "The loss is a sum of terms and one of them is an order of magnitude larger than all "
        "the others together, so it sets the gradient (and, for SGD, the largest learning rate "
        "that is stable): the smaller terms barely move from where they started. Typical causes "
        "are terms on different scales: a reconstruction or regression loss with "
        "reduction='sum' or on unnormalised targets next to a cross-entropy, or a fixed weight "
        "copied from another setup. A large term can also win and then look small: a penalty "
        "summed over the batch drives its own value down while the task term never moves from "
        "its start. Or it grows first and takes the loss to inf/NaN. Normalise each term "
        "(reduction='mean', standardised targets), weight them so they start comparable, or "
        "learn the weights (uncertainty weighting, Kendall et al. 2018; GradNorm, Chen et al. "
        "2018)."
    )

    def check(self, ev: Evidence) -> Finding | None:
        start_raw = ev.get("loss_components_start")
        if not isinstance(start_raw, dict) or len(start_raw) < 2:
            return None
        series = {str(name): ev.values_of(COMPONENT_PREFIX + str(name)) for name in start_raw}
        if any(v.size and not np.isfinite(v[-1]) for v in series.values()):
            # The terms end non-finite: medians over a blow-up say nothing of their scales;
            # only which term led it does.
            return self._blew_up(series, ev.step)
        recent: dict[str, float] = {}
        start: dict[str, float] = {}
        for name, first in start_raw.items():
            first_value = finite_number(first)
            values = series[str(name)][-RECENT_STEPS:]
            values = values[np.isfinite(values)]
            if first_value is None or values.size == 0:
                continue
            recent[str(name)] = float(np.median(np.abs(values)))
            start[str(name)] = abs(first_value)
        if len(recent) < 2:
            return None
        dominant = max(recent, key=lambda k: recent[k])
        others = sum(v for k, v in recent.items() if k != dominant)
        if others <= 0.0:
            return None
        ratio = recent[dominant] / others
        if ratio < ORDER_OF_MAGNITUDE:
            return self._served(ev, recent, start)
        stalled = sorted(
            k
            for k in recent
            if k != dominant and start[k] > 0.0 and recent[k] >= STALLED_SHARE * start[k]
        )
        if not stalled:
            # The small terms are being learned: a scale gap, but they do not stall. The large
            # one may be the term that stalls, pinned by the gradient of a term that won.
            return self._served(ev, recent, start)
        progress = {k: recent[k] / start[k] for k in stalled}
        confidence = found_confidence(
            0.25 * ramp(float(np.log10(ratio)), 1.0, 3.0),
            0.1 * ramp(min(progress.values()), STALLED_SHARE, 1.0),
        )
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "dominant": dominant,
                "ratio": ratio,
                "threshold": ORDER_OF_MAGNITUDE,
                "components": recent,
                "stalled": stalled,
                "stalled_vs_start": progress,
            },
            step=ev.step,
            summary=f"loss term '{dominant}' ({recent[dominant]:.3g}) is {ratio:.0f}x the "
            f"others together; {', '.join(stalled)} still at "
            f"{min(progress.values()):.0%}+ of their starting value",
            remedies=(
                _reweight(
                    dominant,
                    ratio,
                    "normalise each term (reduction='mean', standardised targets) or weight "
                    "them to comparable scales",
                ),
            ),
        )

    def _served(
        self, ev: Evidence, recent: dict[str, float], start: dict[str, float]
    ) -> Finding | None:
        """One term fell an order of magnitude while another never moved, on a stalled loss."""
        fallen = {
            k: start[k] / recent[k]
            for k in recent
            if recent[k] > 0.0 and start[k] >= ORDER_OF_MAGNITUDE * recent[k]
        }
        unmoved = sorted(
            k
            for k in recent
            if start[k] > 0 and UNMOVED_SHARE <= recent[k] / start[k] <= UNMOVED_RISE
        )
        if not fallen or not unmoved or ev.get("detector_state") not in SERVED_STATES:
            return None
        held = sum(recent[k] for k in unmoved) / sum(recent.values())
        if held < MOST_LOSS_SHARE:
            return None
        served = max(fallen, key=lambda k: fallen[k])
        confidence = found_confidence(0.2 * ramp(float(np.log10(fallen[served])), 1.0, 3.0))
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "reading": "served",
                "dominant": served,
                "fell_by": fallen[served],
                "threshold": ORDER_OF_MAGNITUDE,
                "components": recent,
                "stalled": unmoved,
                "stalled_vs_start": {k: recent[k] / start[k] for k in unmoved},
                "stalled_loss_share": held,
            },
            step=ev.step,
            summary=f"loss term '{served}' fell {fallen[served]:.0f}x from its start while "
            f"{', '.join(repr(k) for k in unmoved)} stayed within 10% of "
            f"{'its' if len(unmoved) == 1 else 'their'} start and "
            f"{'holds' if len(unmoved) == 1 else 'hold'} {held:.0%} of the loss: the optimizer "
            f"served '{served}'",
            remedies=(
                _reweight(
                    served,
                    fallen[served],
                    "normalise each term (reduction='mean') or weight them so the task term's "
                    "gradient is not swamped",
                ),
            ),
        )

    def _blew_up(self, series: dict[str, np.ndarray], step: int) -> Finding | None:
        """A term that held most of the loss at its first value grew an order of magnitude
        before any other term did, and the terms then went non-finite: the term on the wrong
        scale drove the blow-up (an LR too high grows every term, a weight penalty that starts
        small among them)."""
        if not all(v.size for v in series.values()):
            return None
        broken = [
            int(np.argmin(np.isfinite(v))) for v in series.values() if not np.all(np.isfinite(v))
        ]
        if not broken:
            return None
        end = min(broken)  # values before the first non-finite one
        first = {k: abs(float(v[0])) for k, v in series.items()}
        if end < 2 or not all(np.isfinite(x) and x > 0.0 for x in first.values()):
            return None
        grew_at = {}
        for name, values in series.items():
            grown = np.flatnonzero(np.abs(values[:end]) >= ORDER_OF_MAGNITUDE * first[name])
            if grown.size:
                grew_at[name] = int(grown[0])
        if not grew_at:
            return None
        leader = min(grew_at, key=lambda k: grew_at[k])
        if any(k != leader and at <= grew_at[leader] for k, at in grew_at.items()):
            return None
        held = first[leader] / sum(first.values())
        if held < MOST_LOSS_SHARE:
            return None
        growth = float(np.max(np.abs(series[leader][:end]))) / first[leader]
        confidence = found_confidence(0.1 * ramp(float(np.log10(growth)), 1.0, 3.0))
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "reading": "blew_up",
                "dominant": leader,
                "grew_by": growth,
                "threshold": ORDER_OF_MAGNITUDE,
                "start_share": held,
                "first_values": first,
                "grew_at_point": grew_at[leader],
            },
            step=step,
            summary=f"loss term '{leader}' held {held:.0%} of the loss at the start, grew "
            f"{growth:.3g}x before any other term grew 10x, and the loss then went non-finite",
            remedies=(
                _reweight(
                    leader,
                    growth,
                    "normalise the term (reduction='mean') or weight it down so it does not "
                    "set the step size",
                ),
            ),
        )
