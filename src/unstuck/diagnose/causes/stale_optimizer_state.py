"""Adaptive optimizer state shrinks every step, or the state was lost on resume."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._landscape import NEAR_CONVERGENCE_DROP, loss_drop
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

# Σv̂ over the median ‖g‖² of the last 1/(1−β₂) steps: 100 means the adaptive step is ≥ 10×
# (one decade, the unit of the update-ratio thresholds, REFERENCE.md §3) smaller than the
# gradients of the averaging window warrant.
STALE_RATIO = (
    100.0  # ours: one decade of step size lost to state the recent gradients do not explain
)
LOST_SHARE = (
    0.5  # ours: the optimizer's own step count is below half the Guard's: most steps ran without it
)
MIN_HISTORY = 4  # sampled gradient norms needed for the reference median


def _latest(ev: Evidence, name: str) -> float:
    values = ev.values_of(name)
    return float(values[-1]) if values.size else float("nan")


class StaleOptimizerState(Rule):
    """Adam's second moment is far above the squared gradients of its own averaging window, or
    parameters have no optimizer state although optimizer steps were taken (resumed without
    ``optimizer.load_state_dict``)."""

    code: ClassVar[str] = "stale_optimizer_state"
    requires: ClassVar[frozenset[str]] = frozenset({"optimizer_type"})
    uses: ClassVar[frozenset[str]] = frozenset(
        {
            "optimizer_state_empty",
            "optimizer_state_step",
            "optimizer_step_lag",
            "second_moment_sum",
            "second_moment_beta",
        }
    )
    # Gradient spikes from these fill v̂ too; the spike, not the state, is then the root.
    # A memorised batch or a spike leaves Adam's second moment far above the current gradients.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {"exploding_gradients", "nonfinite", "repeated_data"}
    )
    explanation: ClassVar[str] = (
        "Adam-family optimizers divide each step by the square root of a running average of "
        "squared gradients (v̂, averaged over ~1/(1−β₂) = 1,000 steps by default). When v̂ holds "
        "gradients far larger than the ones the run makes now — a spike from one bad batch, or "
        "optimizer state loaded from a run whose loss had another scale (reduction='sum' vs "
        "'mean', another loss weight) — every step is shrunk by √(v̂/g²) until v̂ decays, which "
        "takes thousands of steps: the loss crawls as if the LR were tiny. The other face of the "
        "same bug is state that is missing: a run resumed from a checkpoint without "
        "optimizer.load_state_dict restarts the moments (and Adam's bias correction) from zero. "
        "What to do: reset the optimizer state (build a new optimizer, or clear optimizer.state) "
        "when the loss scale changed; load the optimizer state with the model when resuming; "
        "consider a smaller β₂ (0.99-0.995) when gradient spikes are common."
    )

    def check(self, ev: Evidence) -> Finding | None:
        lost = self._lost_state(ev)
        if lost is not None:
            return lost
        return self._stale_moment(ev)

    def _lost_state(self, ev: Evidence) -> Finding | None:
        empty = _latest(ev, "optimizer_state_empty")
        own = _latest(ev, "optimizer_state_step")
        lag = _latest(ev, "optimizer_step_lag")
        guard_steps = own + lag
        if math.isfinite(empty) and empty > 0:
            share, what = empty, f"{empty:.0%} of the parameters have no optimizer state"
        elif (
            math.isfinite(own)
            and math.isfinite(lag)
            and guard_steps > 0
            and own < LOST_SHARE * guard_steps
        ):
            share = 1.0 - own / guard_steps
            what = (
                f"the optimizer has taken {own:.0f} steps of its own but the run {guard_steps:.0f}"
            )
        else:
            return None
        return Finding(
            cause=self.code,
            confidence=0.7,
            evidence={
                "empty_state_share": empty if math.isfinite(empty) else 0.0,
                "optimizer_own_steps": own if math.isfinite(own) else -1.0,
                "optimizer_step_lag": lag if math.isfinite(lag) else 0.0,
                "lost_share": share,
                "threshold": LOST_SHARE,
            },
            step=ev.step,
            summary=f"optimizer state lost at step > 0: {what}",
            remedies=(
                Remedy(
                    "load_optimizer_state",
                    note="save and load optimizer.state_dict() with the model when resuming",
                ),
            ),
        )

    def _stale_moment(self, ev: Evidence) -> Finding | None:
        drop = loss_drop(ev)
        if drop is not None and drop[2] >= NEAR_CONVERGENCE_DROP:
            # Near convergence the gradients shrink and v̂ lags them by up to 1/(1−β₂) steps:
            # a large ratio there is the average catching up, not a stale state.
            return None
        sums = ev.values_of("second_moment_sum")
        at = ev.steps_of("second_moment_sum")
        norms = ev.values_of("grad_norm")
        norm_steps = ev.steps_of("grad_norm")
        if sums.size == 0 or at.size != sums.size or norm_steps.size != norms.size:
            return None
        beta = float(ev.get("second_moment_beta", 0.999))
        if not (math.isfinite(beta) and 0.0 < beta < 1.0):
            return None
        window = 1.0 / (1.0 - beta)  # the averaging horizon of the second moment
        now, v_hat = int(at[-1]), float(sums[-1])
        keep = (norm_steps <= now) & np.isfinite(norms)
        seen, when = norms[keep], norm_steps[keep]
        if seen.size < MIN_HISTORY or not math.isfinite(v_hat) or v_hat <= 0:
            return None
        # What v̂ holds if it was filled by the gradients this run made: Σv̂ is (bias-corrected)
        # β₂-weighted mean of ‖g‖², so the sampled norms weighted β₂^(now − s) give it. A short
        # run's v̂ still holds its first, larger gradients (a median of the recent ones would
        # call that stale); state from another loss scale is what this mean cannot explain.
        weights = beta ** (now - when).astype(np.float64)
        reference = float(np.sum(weights * seen**2) / np.sum(weights))
        if not math.isfinite(reference) or reference <= 0:
            return None
        ratio = v_hat / reference
        if ratio < STALE_RATIO:
            return None
        shrink = math.sqrt(ratio)
        confidence = found_confidence(0.15 * math.log10(ratio / STALE_RATIO))
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "second_moment_sum": v_hat,
                "grad_sq_reference": reference,
                "ratio": ratio,
                "step_shrink": shrink,
                "window_steps": window,
                "threshold": STALE_RATIO,
            },
            step=ev.step,
            summary=f"Adam's second moment is {ratio:.0f}× what this run's squared gradients "
            f"put there (β₂-weighted over ~{window:.0f} steps): every step is ~{shrink:.0f}× "
            "smaller than they warrant",
            remedies=(
                Remedy(
                    "reset_optimizer_state",
                    automatic=True,
                    note="optimizer.state.clear() (or a new optimizer) after a change of loss "
                    "scale; a smaller beta2 forgets spikes sooner",
                ),
            ),
        )
