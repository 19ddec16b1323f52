"""The LR range test as a probe: collect the sweep's losses, stop on a blow-up, restore, suggest.

The action (:mod:`unstuck.rescue.actions.lr_range_test`) starts the LR ramp and reads a sweep;
this probe runs it on the user's steps: it reads the loss after every step (so it stops before a
blow-up), and when the sweep has run (or diverged) it restores the snapshot taken before it and
hands the engine the suggested factor as an ``lr_scale`` follow-up, verified like any action
against the loss before the sweep.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from unstuck.rescue.actions.lr_range_test import LRRangeTest, diverged, suggest, sweep_factors
from unstuck.rescue.actions.lr_scale import LRScale
from unstuck.rescue.policy import Proposal
from unstuck.rescue.probe import Event, Probe, ProbeHost
from unstuck.types import ActionRecord, EngineEvent

__all__ = ["MIN_RANGE_STEPS", "RangeTest"]

MIN_RANGE_STEPS = 40  # a shorter sweep cannot be read (10 skipped + 5 skipped + a slope)
DEFAULT_STEPS = 100  # sweep length when the proposal names none


class RangeTest(Probe):
    """One LR sweep in progress."""

    name: ClassVar[str] = LRRangeTest.name

    def __init__(
        self,
        host: ProbeHost,
        record: ActionRecord,
        snapshot: str,
        start: int,
        params: dict[str, Any],
        before: tuple[np.ndarray, np.ndarray],
    ) -> None:
        self.host = host
        self.record = record
        self.snapshot = snapshot
        self.start_step = start  # the last step before the sweep's first optimizer step
        self.planned = int(params["steps"])
        self.low = float(params.get("low", 1e-2))
        self.high = float(params.get("high", 1e4))
        acc = host.controls.accumulation
        self.every = acc.steps if acc.owned else 1  # Guard steps per optimizer step
        self.before = before
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.done = False
        self.spent = 0
        self.nonfinite = 0
        self.follow = None
        self.follow_evidence = {}

    @classmethod
    def over_budget(
        cls, allowance: int, step: int, share: float, params: dict[str, Any], horizon: int
    ) -> str | None:
        if allowance < MIN_RANGE_STEPS:
            return (
                f"probe budget: {allowance} steps left of "
                f"{share:.0%} of {step} steps, a range test needs {MIN_RANGE_STEPS}"
            )
        return None

    @classmethod
    def fit_params(cls, params: dict[str, Any], allowance: int) -> dict[str, Any]:
        return {**params, "steps": min(int(params.get("steps", DEFAULT_STEPS)), allowance)}

    @classmethod
    def start(
        cls,
        host: ProbeHost,
        step: int,
        snapshot: str,
        proposal: Proposal,
        record: ActionRecord | None,
        before: tuple[np.ndarray, np.ndarray],
        horizon: int,
    ) -> RangeTest:
        assert record is not None  # an action: the engine applied it and made its record
        return cls(host, record, snapshot, step, dict(proposal.params), before)

    def flush_hint(self, step: int) -> int | None:
        return None  # every step: it stops before a blow-up

    def advance(self, step: int, steps: np.ndarray, values: np.ndarray) -> list[Event]:
        self.steps += [int(s) for s in steps]
        self.losses += [float(v) for v in values]
        # Loss at Guard step start+1+j reflects the parameters after sweep step j−1.
        offsets = (np.asarray(self.steps) - self.start_step - 1) // self.every
        usable = (offsets >= 1) & (offsets <= self.planned)
        losses = np.asarray(self.losses)[usable]
        blew_up = diverged(losses, self.planned)
        if not blew_up and step - self.start_step < (self.planned + 1) * self.every:
            return []
        self.done = True
        spent = self.spent = step - self.start_step
        nonfinite = self.nonfinite = int(
            np.sum(~np.isfinite(np.asarray(self.losses, dtype=np.float64)))
        )
        factors = sweep_factors(self.low, self.high, self.planned)[offsets[usable] - 1]
        result = suggest(factors, losses, self.planned, stopped=blew_up)
        record = self.record
        record.verified_step = step
        self.host.restore(self.host.snapshots.get(self.snapshot))  # may refuse: engine fails it
        record.outcome = "restored"
        record.evidence.update(
            {
                "probe_steps": spent,
                "suggested_factor": result.factor,
                "method": result.method,
                "confident": result.confident,
                "steepest": result.steepest,
                "valley": result.valley,
                "diverged_at": result.diverged_at,
                "drop": result.drop,
                "nonfinite_losses": nonfinite,
            }
        )
        events: list[Event] = [
            EngineEvent.outcome(record),
            EngineEvent.probe({"probe": self.name, "step": step, **result.to_dict()}),
        ]
        if result.factor is not None:
            self.follow = Proposal(
                LRScale.name,
                {"factor": float(result.factor)},
                reason=(
                    f"LR range test: ×{result.factor:.3g} ({result.method}; steepest "
                    f"×{_fmt(result.steepest)}, valley ×{_fmt(result.valley)}, diverged at "
                    f"×{_fmt(result.diverged_at)})"
                ),
                cause=record.evidence.get("cause") or None,
            )
            self.follow_evidence = {"range_test_step": record.step}
        return events


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"
