"""Policies decide which action to try next from the detector state and the findings.

A policy only proposes; the :class:`~unstuck.rescue.engine.RescueEngine` snapshots, applies,
verifies and rolls back. ``observe`` never proposes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from unstuck.types import Finding

__all__ = ["Ladder", "Observe", "Policy", "Proposal", "make_policy"]

ACT_ON_STATES = frozenset({"plateau", "oscillating", "diverging"})
MIN_CONFIDENCE = 0.5  # a finding below this is reported but never acted on
UNSTABLE_STATES = frozenset({"oscillating", "diverging"})
FALLBACK_KINDS = frozenset({"mid", "near_convergence"})
FALLBACK_CUT = 0.3  # ≈ 10^-0.5: half a decade, gentler than ReduceLROnPlateau's 0.1 default


@dataclass(frozen=True)
class Proposal:
    """An action the policy wants tried, and why."""

    action: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    cause: str | None = None

    @property
    def key(self) -> str:
        return f"{self.action}:{sorted(self.params.items())}"


class Policy:
    """Base class. ``propose`` sees primitives and findings, never the model."""

    name: ClassVar[str] = "policy"
    acts: ClassVar[bool] = True

    def propose(
        self,
        *,
        step: int,
        state: str,
        findings: Sequence[Finding],
        tried: frozenset[str],
        plateau_kind: str | None = None,
    ) -> Proposal | None:
        """The next action to try, or ``None``. ``plateau_kind`` is the open plateau's kind."""
        raise NotImplementedError


class Observe(Policy):
    """Detect and diagnose, change nothing."""

    name: ClassVar[str] = "observe"
    acts: ClassVar[bool] = False

    def propose(
        self,
        *,
        step: int,
        state: str,
        findings: Sequence[Finding],
        tried: frozenset[str],
        plateau_kind: str | None = None,
    ) -> Proposal | None:
        return None


class Ladder(Policy):
    """Wait on hidden progress; else apply the top finding's automatic remedy; else cut the LR.

    The blind LR cut (no cause found) is kept for mid and near-convergence plateaus.
    Acts on a plateau, an oscillation or a divergence of the training loss, and on a slow
    descent only when a confident finding names an automatic remedy (an LR far too low creeps,
    it does not stop). A remedy that was rolled back is not tried again on the same plateau.
    """

    name: ClassVar[str] = "rescue"

    def propose(
        self,
        *,
        step: int,
        state: str,
        findings: Sequence[Finding],
        tried: frozenset[str],
        plateau_kind: str | None = None,
    ) -> Proposal | None:
        confident = [f for f in findings if f.confidence >= MIN_CONFIDENCE]
        # Hidden progress means "wait": never cut there (that blocks the escape), but a
        # confident LR-too-low finding may still speed the motion up; it is verified anyway.
        waiting = state == "hidden_progress"
        if state not in ACT_ON_STATES and not (state in ("slow", "hidden_progress") and confident):
            return None
        for finding in confident:
            for remedy in finding.remedies:
                if not remedy.automatic:
                    continue
                raises = _raises_lr(remedy.action, remedy.params)
                if waiting and not raises:
                    continue
                if state in UNSTABLE_STATES and raises:
                    continue  # never raise the LR of a run that oscillates or diverges
                proposal = Proposal(
                    remedy.action,
                    dict(remedy.params),
                    reason=f"{finding.cause} {finding.confidence:.2f}: {finding.summary}",
                    cause=finding.cause,
                )
                if proposal.key not in tried:
                    return proposal
        # The blind cut is the classic annealing move, so only after the loss has fallen: on an
        # early plateau (nothing learned yet) a cut is the ReduceLROnPlateau mistake.
        if state == "plateau" and plateau_kind in FALLBACK_KINDS:
            proposal = Proposal(
                "lr_scale", {"factor": FALLBACK_CUT}, reason="plateau with no fixable cause found"
            )
            if proposal.key not in tried:
                return proposal
        return None


def _raises_lr(action: str, params: dict[str, Any]) -> bool:
    factor = params.get("factor")
    return action == "lr_scale" and isinstance(factor, (int, float)) and factor > 1


def make_policy(policy: str | Policy) -> Policy:
    """``"observe"``, ``"rescue"`` or a :class:`Policy` instance."""
    if isinstance(policy, Policy):
        return policy
    if policy == "observe":
        return Observe()
    if policy == "rescue":
        return Ladder()
    raise ValueError(
        f"policy must be 'observe', 'rescue' or an unstuck.rescue.Policy instance, got {policy!r}"
    )
