"""Policies decide which action to try next from the detector state and the findings.

A policy only proposes; the :class:`~unstuck.rescue.engine.RescueEngine` snapshots, applies,
verifies and rolls back. ``observe`` never proposes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from unstuck.rescue.actions.clip_adjust import ClipAdjust
from unstuck.rescue.actions.lr_range_test import LRRangeTest
from unstuck.rescue.actions.rewind import Rewind
from unstuck.rescue.actions.warm_restart import WarmRestart
from unstuck.types import (
    ACT_ON_STATES,
    ACTING_CONFIDENCE,
    UNSTABLE_STATES,
    DetectorState,
    Finding,
)

__all__ = [
    "ActionSequence",
    "Ladder",
    "Observe",
    "Policy",
    "Proposal",
    "make_policy",
    "range_test_params",
    "reports_only",
]

MIN_CONFIDENCE = ACTING_CONFIDENCE  # a finding below this is reported but never acted on
MOVING_STATES = frozenset({"slow", "hidden_progress"})  # a finding must hold at two decisions
RANGE_TEST_STEPS = 100  # sweep length (the engine shortens it to what the probe budget allows)
UNSTABLE_SWEEP = {"low": 1e-3, "high": 1.0}  # oscillating/diverging: three decades, downwards
# A stopped run with no diagnosed cause: four decades, upwards only. Over the verdict's short
# horizon a smaller LR looks better (short-horizon bias, Wu, Ren, Liao & Grosse 2018) while it
# slows or blocks the escape from a saddle (docs/references.md, "a cut inside a saddle plateau
# blocks the escape"); a blind cut on a plateau is what ReduceLROnPlateau already does.
PLATEAU_SWEEP = {"low": 1.0, "high": 1e4}
RANGE_TEST = LRRangeTest.name  # the measuring rung unless the policy says otherwise
# A warm restart as the last rung: ×3 then a cosine back to ×1 over 200 steps (the horizon).
WARM_RESTART = {"peak": 3.0, "end": 1.0, "length": 200}


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


# A confirmed spike or divergence: first a rewind past it; a spike that comes back on the same
# episode (the rewind rolled back, or the divergence confirmed again) escalates, after the
# findings' own remedies, to halving the LR and then halving the clip threshold (each from
# the good state before the rise, like every action on a diverging run). Halving: the
# smallest decisive step, as PyTorch's ReduceLROnPlateau's factor 0.1 would be a decade.
REWIND = Proposal(Rewind.name, {}, reason="a confirmed rise: rewind to before it")
SPIKE_CUT, SPIKE_CLIP = 0.5, 0.5  # the escalation's LR and clip factors


def spike_escalation() -> tuple[Proposal, ...]:
    """The rungs after a rewind, in order: an LR cut, then tighter clipping."""
    from unstuck.rescue.actions.lr_scale import LRScale  # imports this module

    return (
        Proposal(LRScale.name, {"factor": SPIKE_CUT}, reason="a repeated spike: cut the LR"),
        Proposal(ClipAdjust.name, {"factor": SPIKE_CLIP}, reason="a repeated spike: clip more"),
    )


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
        plateau_start: int | None = None,
    ) -> Proposal | None:
        """The next action to try, or ``None``. ``plateau_kind``/``plateau_start`` describe the
        open plateau, if any; ``tried`` holds the keys of proposals already made on it."""
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
        plateau_start: int | None = None,
    ) -> Proposal | None:
        return None


class Ladder(Policy):
    """The ladder the field recommends, driven by findings, one verified rung at a time.

    1. *Wait* while the weights still move on a flat loss (``hidden_progress``: only a confident
       LR-raising remedy may speed it up, or one whose finding explains the motion itself,
       ``evidence["explains_weight_motion"]``), and for ``patience`` steps into a plateau.
       While the run still makes progress (``slow``, ``hidden_progress``) a finding is acted
       on only once it has held at two decisions in a row: a one-off finding on a moving run
       costs the steps a wrong action takes to undo.
    2. The top confident finding's automatic remedy.
    3. *Report* when a confident finding ranked above every usable remedy has no automatic
       remedy (architecture, initialisation, data): its explanation says what to change, and
       no schedule change fixes it, so the ladder does not measure or restart past it.
    4. Else measure: the LR range test (or, with ``fallback="branch"``, a branch trial), swept
       over bounds the state allows (a run that oscillates or diverges only downwards).
    5. Else a warm restart.

    Each rung is verified by the engine and rolled back when it hurt; a rung already tried on
    the current plateau is not proposed again, so a rollback moves to the next rung. It never
    raises the LR of a run that oscillates or diverges, and on a slow descent it acts only on a
    confident finding that raises the LR (an LR far too low creeps, it does not stop; a cut
    would only slow a descent that is still going).
    """

    name: ClassVar[str] = "rescue"

    def __init__(self, patience: int = 0, fallback: str = RANGE_TEST) -> None:
        from unstuck.rescue.probe import probe_kinds

        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"Ladder: patience must be an int >= 0, got {patience!r}")
        if fallback not in probe_kinds():
            known = " or ".join(repr(name) for name in probe_kinds())
            raise ValueError(f"Ladder: fallback must be {known}, got {fallback!r}")
        self.patience = patience
        self.fallback = fallback
        # cause -> the first decision step it was seen at, confident, while the run still made
        # progress (slow, hidden progress): acted on only when still there at a later decision.
        self._moving_seen: dict[str, int] = {}

    def propose(
        self,
        *,
        step: int,
        state: str,
        findings: Sequence[Finding],
        tried: frozenset[str],
        plateau_kind: str | None = None,
        plateau_start: int | None = None,
    ) -> Proposal | None:
        confident = [f for f in findings if f.confidence >= MIN_CONFIDENCE]
        waiting = state == "hidden_progress"
        moving = state in MOVING_STATES
        # forgotten as soon as a decision no longer sees it
        seen = self._moving_seen
        self._moving_seen = {f.cause: seen.get(f.cause, step) for f in confident} if moving else {}
        if state not in ACT_ON_STATES and not (state in ("slow", "hidden_progress") and confident):
            return None
        diverging = state == DetectorState.DIVERGING
        if diverging and REWIND.key not in tried and not (confident and reports_only(confident[0])):
            return REWIND  # the engine skips it when no good state from before the rise is held
        for finding in confident:
            for remedy in finding.remedies:
                if not remedy.automatic:
                    continue
                raises = _raises_lr(remedy.action, remedy.params)
                # Waiting on moving weights, only a speed-up is tried, unless the finding says the
                # motion is its own symptom (Adam's steps at too high an LR, not progress).
                if waiting and not (raises or finding.evidence.get("explains_weight_motion")):
                    continue
                if moving and self._moving_seen.get(finding.cause, step) >= step:
                    # The run still makes progress (or its weights may be escaping by
                    # themselves): a finding must still hold at the next decision.
                    continue
                if state in UNSTABLE_STATES and raises:
                    continue  # never raise the LR of a run that oscillates or diverges
                if state == "slow" and not raises:
                    continue  # a slow descent is acted on only to speed it up
                proposal = Proposal(
                    remedy.action,
                    dict(remedy.params),
                    reason=f"{finding.cause} {finding.confidence:.2f}: {finding.summary}",
                    cause=finding.cause,
                )
                if proposal.key not in tried:
                    return proposal
            if reports_only(finding):
                return None  # the top cause needs the user: report it, do not act past it
        if state != "plateau" and state not in UNSTABLE_STATES:
            return None  # measuring and restarting are for a stopped run
        if plateau_start is not None and step - plateau_start < self.patience:
            return None
        if diverging:
            for escalation in spike_escalation():
                if escalation.key not in tried:
                    return escalation
        measure = Proposal(
            self.fallback,
            range_test_params(state) if self.fallback == RANGE_TEST else {},
            reason=f"{state} with no fixable cause found: measure",
        )
        if measure.key not in tried:
            return measure
        if state in UNSTABLE_STATES:
            return None
        restart = Proposal(
            WarmRestart.name, dict(WARM_RESTART), reason="plateau; measuring found nothing better"
        )
        if restart.key not in tried:
            return restart
        return None


class ActionSequence(Policy):
    """Your own ladder: these actions in order, one per verified rung, on each plateau.

    ``ActionSequence(["lr_range_test", ("lr_scale", {"factor": 0.5})])`` tries a range test on each
    plateau (or oscillation, or divergence) and, if it finds nothing or is rolled back, halves
    the LR. Findings are recorded but do not choose the action.
    """

    name: ClassVar[str] = "sequence"

    def __init__(self, steps: Sequence[str | tuple[str, dict[str, Any]]]) -> None:
        from unstuck.rescue.base import get_action
        from unstuck.rescue.probe import probe_kind

        self.steps: list[Proposal] = []
        for item in steps:
            action, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
            kind = probe_kind(action)
            if kind is None or kind.is_action:  # a probe of its own checks its params itself
                get_action(action).validate(params)  # unknown names raise KeyError here
            self.steps.append(Proposal(action, params, reason=f"policy step {len(self.steps) + 1}"))
        if not self.steps:
            raise ValueError("a policy sequence needs at least one action")

    def propose(
        self,
        *,
        step: int,
        state: str,
        findings: Sequence[Finding],
        tried: frozenset[str],
        plateau_kind: str | None = None,
        plateau_start: int | None = None,
    ) -> Proposal | None:
        if state not in ACT_ON_STATES:
            return None
        for proposal in self.steps:
            if proposal.key not in tried:
                return proposal
        return None


def reports_only(finding: Finding) -> bool:
    """A cause no automatic action addresses (architecture, initialisation, data): none of its
    remedies is automatic and none asks for a measurement. The ladder stops at it."""
    from unstuck.rescue.probe import is_probe

    return not any(r.automatic or is_probe(r.action) for r in finding.remedies)


def range_test_params(state: str) -> dict[str, Any]:
    """The sweep the state allows: from ×1 up to ×1e4 on a plateau (an LR far too low needs the
    decades; a cut there is judged over a horizon too short to show what it costs), only
    downwards to ×1 on a run that oscillates or diverges (its LR is already too high for it; a
    raise there is the blow-up the sweep would have to stop on)."""
    if state in UNSTABLE_STATES:
        return {"steps": RANGE_TEST_STEPS, **UNSTABLE_SWEEP}
    return {"steps": RANGE_TEST_STEPS, **PLATEAU_SWEEP}


def _raises_lr(action: str, params: dict[str, Any]) -> bool:
    """An LR raise, or momentum added to plain SGD: both lengthen the steps along a slope
    (``Action.raises_lr``)."""
    from unstuck.rescue.base import all_actions

    registered = all_actions().get(action)
    return registered is not None and registered.raises_lr(params)


def make_policy(policy: str | Policy | Sequence[Any]) -> Policy:
    """``"observe"``, ``"rescue"``, ``"branch"``, a :class:`Policy`, or a sequence of actions."""
    if isinstance(policy, Policy):
        return policy
    if policy == "observe":
        return Observe()
    if policy == "rescue":
        return Ladder()
    if policy == "branch":
        from unstuck.rescue.branches import BRANCH_TRIAL

        return Ladder(fallback=BRANCH_TRIAL)
    if isinstance(policy, (list, tuple)):
        return ActionSequence(policy)
    raise ValueError(
        "policy must be 'observe', 'rescue', 'branch', a list of action names (or "
        f"(name, params) pairs), or an unstuck.rescue.Policy instance, got {policy!r}"
    )
