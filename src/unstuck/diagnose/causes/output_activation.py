"""A wrong output activation for the loss: a softmax fed to a loss that expects logits, a sigmoid
on regression targets."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._hurt import STALLED_STATES, loss_hurt
from unstuck.diagnose.causes._landscape import LEVEL_POINTS, recent_median
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import ROW_SUM_TOLERANCE
from unstuck.types import Finding, Remedy

# The ranges of the squashing output functions, by the autograd op that makes the output.
BOUNDS: dict[str, tuple[float, float]] = {
    "Sigmoid": (0.0, 1.0),
    "Hardsigmoid": (0.0, 1.0),
    "Softmax": (0.0, 1.0),
    "Tanh": (-1.0, 1.0),
    "Hardtanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0),
}
# Targets beyond an output's reachable range by at least the range's own width: a sample there
# keeps an error larger than any error within the range, whatever the weights (ours: the loss
# has a floor the model cannot pass, not a slow stretch).
TARGET_EXCESS = 1.0
# Without the op's name (a compiled model, a custom squash), an output counts as bounded only
# when it presses on the bound the targets lie beyond: within 1e-3 of it, where a sigmoid's
# derivative is below 1e-3 (σ' = σ(1 − σ)); a linear head still near its initial scale does not.
PINNED = 1e-3
# Strengths (confidence units above FOUND_CONFIDENCE): the op's name confirms what the numbers
# show (a structural fact, not a reading), so it adds a step; ours, as over_clipping's 0.3 span.
OP_CONFIRMED = 0.15
ONE_UNIT = 0.3  # a one-unit softmax: the gradient is exactly zero, nothing else can explain it


# Where the confined reading speaks: a stall, or a crawl ("slow"), whose level sits in the band.
# Which of the two the detector calls on a loss that creeps inside the band depends on minibatch
# noise (on one CPU the double-softmax scenario plateaus, on another with one thread it reads
# slow); neither is a loss that trains, and only "improving" leaves the band.
CONFINED_STATES = STALLED_STATES | {"slow"}


def probability_band(units: int) -> tuple[float, float]:
    """The range of cross-entropy taken of probabilities instead of logits, per sample, for
    ``units`` classes: −p_y + log Σ_j e^{p_j} lies in [log(e + K − 1) − 1, log(e + K − 1)]
    (lowest with p one-hot on the right class, highest on a wrong one; derived, not fitted)."""
    top = math.log(math.e + units - 1)
    return top - 1.0, top


def confined(ev: Evidence, units: int) -> bool:
    """The loss has stalled or crawls (a detector state in ``CONFINED_STATES``) inside the band
    cross-entropy over probabilities is confined to: what F.cross_entropy on a softmax output
    reaches, even when it fell more than ``loss_hurt``'s 10 % from its start to get there."""
    if ev.get("detector_state") not in CONFINED_STATES:
        return False
    level = recent_median(ev, "loss", LEVEL_POINTS)
    if level is None:
        return False
    low, high = probability_band(units)
    return low <= level <= high


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


class OutputActivation(Rule):
    """The model's output does not fit the loss: probability rows (a softmax) where torch's
    losses expect logits, a one-unit softmax, or a bounded output (sigmoid/tanh) far from the
    float targets."""

    code: ClassVar[str] = "output_activation"
    requires: ClassVar[frozenset[str]] = frozenset({"output_stats"})
    uses: ClassVar[frozenset[str]] = frozenset({"target_stats", "loss", "detector_state"})
    # A squashed output flattens the landscape, shrinks the steps, saturates the last layer and
    # confines every sample's loss to a band: what those rules see is this cause's symptom.
    explains: ClassVar[frozenset[str]] = frozenset(
        {
            "flat_region",
            "saddle_point",
            "lr_too_low",
            "saturated_activations",
            "vanishing_gradients",
            "label_noise",
            "hard_subset",
            "batch_size",
        }
    )
    explanation: ClassVar[str] = (
        "The model's output is not what its loss expects. torch's F.cross_entropy / "
        "nn.CrossEntropyLoss and BCEWithLogitsLoss (Keras: from_logits=True) take raw logits "
        "and apply the softmax or sigmoid themselves: a softmax already in the model squashes "
        "every logit into [0, 1], the loss is confined to a one-nat band and its gradient "
        "shrinks; MSE on softmax probabilities vanishes once they saturate; a softmax over a "
        "single unit is always 1, so the loss cannot move at all; and a sigmoid (or tanh) on the "
        "output cannot reach regression targets outside [0, 1] ([-1, 1]), so the loss stops "
        "at a floor. Wrong output activations and losses are fault types of real buggy "
        "programs (DeepFD's 'act' and 'loss'). Do: drop the softmax and pass the "
        "logits to F.cross_entropy (or use log_softmax with nll_loss); use sigmoid outputs with "
        "BCEWithLogitsLoss for multi-label targets; give a binary task one logit with "
        "BCEWithLogitsLoss or two with cross-entropy; for regression drop the output sigmoid "
        "or rescale the targets into its range. The evidence is the sampled model output "
        "(what the loss receives) and float targets passed with batch=(inputs, targets); a "
        "softmax output also works with a hand-written NLL on its log, so the rule speaks only "
        "when the training loss is hurt."
    )

    def check(self, ev: Evidence) -> Finding | None:
        out = ev.get("output_stats")
        if not isinstance(out, dict):
            return None
        units, lo, hi = out.get("units"), out.get("min"), out.get("max")
        if not isinstance(units, int) or units < 1 or not _finite(lo, hi):
            return None
        op = str(out.get("last_op") or "")
        probability = bool(out.get("probability_rows"))
        hurt = loss_hurt(ev)
        if hurt is None and units >= 2 and probability and confined(ev, units):
            hurt = "confined to the cross-entropy-of-probabilities band"
        targets = ev.get("target_stats")
        targets = targets if isinstance(targets, dict) else None
        if hurt is None:
            # Probability rows train in working programs (a softmax + an NLL of its log): they
            # need a hurt loss. A bounded output far from its targets never trains (below).
            return self._bounded(ev, out, targets, self._base(out, units, op, None), op, None)
        base = self._base(out, units, op, hurt)
        if units == 1 and bool(out.get("constant")) and (probability or op == "LogSoftmax"):
            return self._finding(
                ev,
                "one_unit_softmax",
                found_confidence(ONE_UNIT),
                base,
                f"the model's output has one unit and is {base['output_max']:g} on every sample (a "
                f"softmax over one unit): the loss cannot move (it is {hurt})",
                "replace the one-unit softmax: one logit with BCEWithLogitsLoss, or two logits "
                "with F.cross_entropy",
            )
        if units >= 2 and probability:
            multi = (
                targets is not None
                and targets.get("units") == units
                and _finite(targets.get("row_sum_max"))
                and float(targets["row_sum_max"]) > 1.0 + ROW_SUM_TOLERANCE
            )
            note = (
                "multi-label targets (rows sum to more than 1): sigmoid outputs with "
                "BCEWithLogitsLoss"
                if multi
                else "drop the softmax and pass the logits to F.cross_entropy (Keras: "
                "from_logits=True), or use log_softmax with nll_loss"
            )
            base["multi_label_targets"] = multi
            summary = (
                f"every row of the model's {units}-unit output is a probability vector (rows "
                f"sum to 1 within {float(out.get('row_sum_error') or 0):.1g}"
                f"{', op ' + op if op else ''}) and the loss is {hurt}: torch's cross-entropy "
                "expects logits"
            )
            if multi:
                summary += "; the targets are multi-label, which a softmax cannot represent"
            return self._finding(
                ev,
                "softmax",
                found_confidence(0.1, OP_CONFIRMED if op == "Softmax" else 0.0),
                base,
                summary,
                note,
            )
        return self._bounded(ev, out, targets, base, op, hurt)

    @staticmethod
    def _base(out: dict[str, Any], units: int, op: str, hurt: str | None) -> dict[str, Any]:
        return {
            "units": units,
            "output_min": float(out["min"]),
            "output_max": float(out["max"]),
            "row_sum_error": out.get("row_sum_error"),
            "last_op": op,
            "loss_hurt": hurt,
            "sampled_step": out.get("step"),
        }

    def _bounded(
        self,
        ev: Evidence,
        out: dict[str, Any],
        targets: dict[str, Any] | None,
        base: dict[str, Any],
        op: str,
        hurt: str | None,
    ) -> Finding | None:
        """Targets beyond a bounded output's range by its width: every such sample keeps an
        error the weights cannot remove, so no working program shows it and no hurt gate is
        needed (the loss may still fall over 10 % while the outputs move to the bound)."""
        if targets is None or not _finite(targets.get("min"), targets.get("max")):
            return None
        lo, hi = float(out["min"]), float(out["max"])
        t_lo, t_hi = float(targets["min"]), float(targets["max"])
        if op in BOUNDS:
            bound = BOUNDS[op]
        elif lo >= 0.0 and hi <= 1.0:
            bound = (0.0, 1.0)
        elif lo >= -1.0 and hi <= 1.0:
            bound = (-1.0, 1.0)
        else:
            return None
        b_lo, b_hi = bound
        if lo < b_lo - ROW_SUM_TOLERANCE or hi > b_hi + ROW_SUM_TOLERANCE:
            return None  # the numbers contradict the op's range (an op after it we skipped)
        width = b_hi - b_lo
        above, below = (t_hi - b_hi) / width, (b_lo - t_lo) / width
        excess = max(above, below)
        if excess < TARGET_EXCESS:
            return None
        pinned = hi >= b_hi - PINNED if above >= below else lo <= b_lo + PINNED
        if op not in BOUNDS and not pinned:
            return None
        base.update(
            target_min=t_lo,
            target_max=t_hi,
            bound=list(bound),
            target_excess=excess,
            threshold=TARGET_EXCESS,
            pinned=pinned,
        )
        return self._finding(
            ev,
            "bounded_output",
            found_confidence(
                0.1 * min(math.log2(excess), 2.0), OP_CONFIRMED if op in BOUNDS else 0.0
            ),
            base,
            f"the model's output lies in [{b_lo:g}, {b_hi:g}]{' (' + op + ')' if op else ''} "
            f"but the targets span [{t_lo:.3g}, {t_hi:.3g}], {excess:.1f}× the output's range "
            f"beyond it{', and the loss is ' + hurt if hurt else ''}",
            "drop the output sigmoid/tanh (a linear output for regression), or rescale the "
            "targets into its range",
        )

    def _finding(
        self,
        ev: Evidence,
        reading: str,
        confidence: float,
        evidence: dict[str, Any],
        summary: str,
        note: str,
    ) -> Finding:
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={"reading": reading, **evidence},
            step=ev.step,
            summary=summary,
            remedies=(Remedy("change_output_activation", note=note),),
        )
