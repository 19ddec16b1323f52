"""The findings a run has recorded: which of a decision's findings are new, which are roots.

Every decision re-runs the rules, so the same cause comes back flush after flush. A run records
it again only after ``REFIND_AFTER`` steps, or sooner when its confidence rose by
``REFIND_RISE``; and a root cause recorded recently still explains later symptoms. The Guard
and the Keras callback keep one of these each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from unstuck.diagnose.base import ROOT_CONFIDENCE, raw_confidence
from unstuck.types import Finding

__all__ = ["REFIND_AFTER", "REFIND_RISE", "FindingLog"]

REFIND_RISE = 0.1  # a finding recorded again sooner when its confidence rose by this much
REFIND_AFTER = 1000  # steps before the same cause is recorded again as a new finding


class FindingLog:
    """Recorded findings, and when and how confident each cause was last recorded."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._last_found: dict[str, int] = {}
        self._last_confidence: dict[str, float] = {}

    def roots(self, step: int) -> frozenset[str]:
        """Causes recorded confidently within ``REFIND_AFTER`` steps: exploding gradients at a
        plateau's start still explain the noisy steps measured later in it."""
        return frozenset(
            f.cause
            for f in self.findings
            if raw_confidence(f) >= ROOT_CONFIDENCE and step - f.step < REFIND_AFTER
        )

    def record(self, findings: Iterable[Finding], step: int) -> list[Finding]:
        """Record the findings that are new at ``step`` and return them."""
        new = []
        for finding in findings:
            last = self._last_found.get(finding.cause)
            if (
                last is not None
                and step - last < REFIND_AFTER
                and finding.confidence < self._last_confidence.get(finding.cause, 0.0) + REFIND_RISE
            ):
                continue
            self._last_found[finding.cause] = step
            self._last_confidence[finding.cause] = finding.confidence
            self.findings.append(finding)
            new.append(finding)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "last_found": dict(self._last_found),
            "last_confidence": dict(self._last_confidence),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.findings = [Finding.from_dict(f) for f in state["findings"]]
        self._last_found = {str(k): int(v) for k, v in state["last_found"].items()}
        self._last_confidence = {
            str(k): float(v) for k, v in state.get("last_confidence", {}).items()
        }
