"""Branch trials: several remedies tried from one snapshot; the winner kept only if it is real.

No peer does this. From the snapshot taken at the decision, each candidate remedy runs for a
short horizon on the user's next steps, then the snapshot is restored and the next candidate
runs; the unchanged *control* runs last. Each branch is scored on the same fixed set of batches
the Guard keeps (its probe set, evaluated in ``eval`` mode without gradients) and on its
training-loss trend. The best candidate is kept only when it beats the control on every kind of
evidence:

* its probe-set loss is lower than the control's on the same batches, by more than
  ``Z_BETTER`` standard errors of the paired per-batch log differences, and
* its training loss over the second half of its branch is not worse than the control's (the
  batch-means test of :mod:`unstuck.rescue.verify`).

Without a probe set (no ``loss_fn``/``probe_fn``) the training-loss test alone decides, and it
must then say *better*. When the control wins, training simply continues from the control's
end state: those steps were ordinary training. The evidence reads like "lr ×30 fell 3.7× faster
than control".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from unstuck.rescue.actions.lr_scale import LRScale
from unstuck.rescue.actions.reset_optimizer_state import ResetOptimizerState
from unstuck.rescue.actions.warm_restart import WarmRestart
from unstuck.rescue.base import get_action
from unstuck.rescue.policy import Proposal
from unstuck.rescue.probe import Event, Probe, ProbeHost
from unstuck.rescue.verify import Z_WORSE, judge
from unstuck.types import ActionRecord, EngineEvent

__all__ = ["BRANCH_TRIAL", "BranchTrial", "default_candidates"]

BRANCH_TRIAL = "branch_trial"  # the name a proposal and its record use (no registered action)

DEFAULT_BRANCH_HORIZON = 100  # steps per branch
MIN_BRANCH_HORIZON = 30  # fewer steps cannot show a trend through minibatch noise
Z_BETTER = Z_WORSE  # the same two standard errors the verdict on single actions uses
MIN_PAIRED_GAIN = 0.01  # with no spread across probe batches, a log gain must still exceed 1 %


def default_candidates(horizon: int = DEFAULT_BRANCH_HORIZON) -> list[dict[str, Any]]:
    """The remedies tried when none are given: the moves the field reaches for on a plateau."""
    return [
        {"action": LRScale.name, "params": {"factor": 0.3}},
        {"action": LRScale.name, "params": {"factor": 3.0}},
        {"action": WarmRestart.name, "params": {"peak": 3.0, "end": 1.0, "length": horizon}},
        {"action": ResetOptimizerState.name, "params": {}},
    ]


@dataclass
class _Branch:
    label: str
    action: str | None  # None: the control
    params: dict[str, Any]
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    probe: list[float] | None = None
    snapshot: str | None = None  # end state, kept for the best candidate so far

    def tail(self) -> tuple[np.ndarray, np.ndarray]:
        steps = np.asarray(self.steps, dtype=np.float64)
        losses = np.asarray(self.losses, dtype=np.float64)
        half = steps.size // 2
        return steps[half:], losses[half:]

    def rate(self) -> float:
        """Fall of log training loss per step over the branch (first vs last quarter)."""
        losses = np.asarray(self.losses, dtype=np.float64)
        if losses.size < 8 or not np.all(np.isfinite(losses)) or not np.all(losses > 0):
            return math.nan
        q = losses.size // 4
        return float(np.log(losses[:q]).mean() - np.log(losses[-q:]).mean()) / losses.size

    def score(self) -> float:
        """Lower is better: mean log probe loss, else mean log training loss of the tail."""
        values = self.probe if self.probe else list(self.tail()[1])
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
            return math.inf
        return float(np.log(arr).mean())

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "action": self.action or "control",
            "params": dict(self.params),
            "score": self.score(),
            "probe_loss": float(np.mean(self.probe)) if self.probe else None,
            "train_tail": float(np.mean(self.tail()[1])) if self.losses else None,
            "rate": self.rate(),
        }


class BranchTrial(Probe):
    """One branch trial in progress; the engine feeds it losses at each flush."""

    name: ClassVar[str] = BRANCH_TRIAL
    is_action: ClassVar[bool] = False
    rests: ClassVar[bool] = True  # whoever won, a cooldown follows

    def __init__(
        self, host: ProbeHost, step: int, snapshot: str, proposal: Proposal, horizon: int
    ) -> None:
        params = dict(proposal.params)
        self.horizon = int(params.get("horizon", min(horizon, DEFAULT_BRANCH_HORIZON)))
        if self.horizon < MIN_BRANCH_HORIZON:
            raise ValueError(
                f"{BRANCH_TRIAL}: horizon must be >= {MIN_BRANCH_HORIZON}, got {self.horizon}"
            )
        self.host = host
        self.snapshot = snapshot
        self.branches: list[_Branch] = []
        skipped = {}
        for cand in params.get("candidates") or default_candidates(self.horizon):
            action = get_action(cand["action"])
            cand_params = dict(cand.get("params", {}))
            action.validate(cand_params)
            why_not = action.unavailable(host.controls, cand_params)
            label = action.describe(cand_params)
            if why_not is not None:
                skipped[label] = why_not
                continue
            self.branches.append(_Branch(label, cand["action"], cand_params))
        self.branches.append(_Branch("control", None, {}))
        self.record = ActionRecord(
            name=BRANCH_TRIAL,
            step=step,
            reason=proposal.reason,
            outcome="probing",
            params={
                "horizon": self.horizon,
                "candidates": [b.label for b in self.branches[:-1]],
                "label": f"branch trial ({len(self.branches) - 1} remedies vs control)",
            },
            evidence={"cause": proposal.cause or "", "skipped": skipped},
        )
        self.index = 0
        self.branch_start = step
        self.done = False
        self.spent = 0
        self.nonfinite = 0
        self.follow = None
        self.follow_evidence = {}
        self.before = (np.zeros(0), np.zeros(0))
        self._best: int | None = None

    @staticmethod
    def budget_needed(params: dict[str, Any], horizon: int) -> int:
        """Steps the trial spends beyond ordinary training: one horizon per candidate."""
        h = int(params.get("horizon", min(horizon, DEFAULT_BRANCH_HORIZON)))
        candidates = params.get("candidates") or default_candidates(h)
        return len(candidates) * h

    @classmethod
    def over_budget(
        cls, allowance: int, step: int, share: float, params: dict[str, Any], horizon: int
    ) -> str | None:
        need = cls.budget_needed(params, horizon)
        if allowance < need:
            return (
                f"probe budget: {allowance} steps left of "
                f"{share:.0%} of {step}, a branch trial needs {need}"
            )
        return None

    @classmethod
    def describe(cls, params: dict[str, Any]) -> str:
        return "branch trial"

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
    ) -> BranchTrial:
        trial = cls(host, step, snapshot, proposal, horizon)
        trial.begin(step)
        return trial

    def flush_hint(self, step: int) -> int | None:
        return max(self.steps_left(step), 1)

    def release(self) -> None:
        for branch in self.branches:
            self.host.snapshots.drop(branch.snapshot)
            branch.snapshot = None

    def steps_left(self, step: int) -> int:
        return self.branch_start + self.horizon - step

    def begin(self, step: int) -> None:
        self._start_branch(step)

    def _start_branch(self, step: int) -> None:
        branch = self.branches[self.index]
        self.branch_start = step
        if branch.action is not None:
            get_action(branch.action).apply(self.host.controls, dict(branch.params))

    def advance(self, step: int, steps: np.ndarray, values: np.ndarray) -> list[Event]:
        branch = self.branches[self.index]
        keep = steps > self.branch_start
        branch.steps += [int(s) for s in steps[keep]]
        branch.losses += [float(v) for v in values[keep]]
        if step - self.branch_start < self.horizon:
            return []
        host = self.host
        branch.probe = host.evaluate()
        is_control = branch.action is None
        if not is_control and (
            self._best is None or branch.score() < self.branches[self._best].score()
        ):
            if self._best is not None:
                host.snapshots.drop(self.branches[self._best].snapshot)
            branch.snapshot = host.snapshots.put(host.capture(step))
            self._best = self.index
        if not is_control:
            self.index += 1
            host.restore(host.snapshots.get(self.snapshot))
            self._start_branch(step)
            return []
        return self._decide(step)

    def _decide(self, step: int) -> list[Event]:
        control = self.branches[-1]
        best = self.branches[self._best] if self._best is not None else None
        won, test = self._beats(best, control) if best is not None else (False, {})
        self.done = True
        self.spent = self.horizon * (len(self.branches) - 1)
        host = self.host
        record = self.record
        record.verified_step = step
        record.evidence.update(
            {
                "branches": [b.summary() for b in self.branches],
                "test": test,
                "probe_steps": self.spent,
            }
        )
        events: list[Event] = []
        winner_record = None
        if won and best is not None:
            assert best.snapshot is not None
            host.restore(host.snapshots.get(best.snapshot))
            record.outcome = "kept"
            record.evidence["winner"] = best.label
            record.evidence["summary"] = _compare_text(best, control)
            winner_record = ActionRecord(
                name=str(best.action),
                step=step,
                reason=f"branch trial: {_compare_text(best, control)}",
                outcome="kept",
                params={**best.params, "label": best.label},
                evidence={
                    "cause": record.evidence.get("cause", ""),
                    "branch_trial_step": record.step,
                },
                verified_step=step,
            )
        else:
            record.outcome = "control_kept"
            record.evidence["winner"] = "control"
            record.evidence["summary"] = (
                _compare_text(best, control) + "; not significant, control kept"
                if best is not None
                else "no candidate could run"
            )
        self.release()  # the engine drops ``snapshot`` and waits its cooldown (``rests``)
        events.append(EngineEvent.outcome(record))
        events.append(
            EngineEvent.probe(
                {"probe": self.name, "step": step, **record.evidence, "horizon": self.horizon}
            )
        )
        if winner_record is not None:
            events.append(EngineEvent.action(winner_record))
        return events

    def _beats(self, best: _Branch, control: _Branch) -> tuple[bool, dict[str, Any]]:
        tail_c, tail_b = control.tail(), best.tail()
        verdict = judge(tail_c[0], tail_c[1], tail_b[0], tail_b[1], use_trend=False)
        test: dict[str, Any] = {
            "train_change": verdict.change,
            "train_stderr": verdict.stderr,
            "train_worse": verdict.worse,
        }
        if best.probe and control.probe and len(best.probe) == len(control.probe):
            pb, pc = np.asarray(best.probe), np.asarray(control.probe)
            if not (np.all(pb > 0) and np.all(pc > 0) and np.all(np.isfinite(pb))):
                return False, test
            diffs = np.log(pb) - np.log(pc)
            mean = float(diffs.mean())
            se = float(diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else 0.0
            margin = max(Z_BETTER * se, MIN_PAIRED_GAIN)
            test.update({"probe_log_change": mean, "probe_stderr": se, "probe_margin": margin})
            return bool(mean < -margin and not verdict.worse), test
        return bool(verdict.better), test


def _compare_text(branch: _Branch, control: _Branch) -> str:
    rb, rc = branch.rate(), control.rate()
    if math.isfinite(rb) and math.isfinite(rc) and rb > 0 and rc > 0:
        return f"{branch.label} fell {rb / rc:.1f}× faster than control"
    pb = f"{np.mean(branch.probe):.4g}" if branch.probe else "—"
    pc = f"{np.mean(control.probe):.4g}" if control.probe else "—"
    return f"{branch.label}: probe loss {pb} vs control {pc}"
