"""Parameters that require gradients but are never updated."""

from __future__ import annotations

from typing import ClassVar

from unstuck.diagnose.base import Rule
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy


class FrozenParameters(Rule):
    """Trainable parameters sit in no optimizer group, so they never change."""

    code: ClassVar[str] = "frozen_parameters"
    requires: ClassVar[frozenset[str]] = frozenset({"params_not_in_optimizer"})
    continuous: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Some parameters have requires_grad=True but are in no optimizer param group, so their "
        "gradients are computed and thrown away: those layers keep their initial values. This "
        "usually means the optimizer was built before a layer was added or replaced, or from a "
        "subset such as model.head.parameters(). Build the optimizer from model.parameters() "
        "after the model is final, or set requires_grad=False on layers you mean to freeze."
    )

    def check(self, ev: Evidence) -> Finding | None:
        names = list(ev.get("params_not_in_optimizer", []))
        if not names:
            return None
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return Finding(
            cause=self.code,
            confidence=1.0,
            evidence={"parameters": names, "count": len(names)},
            step=ev.step,
            summary=f"{len(names)} trainable parameter tensors are in no optimizer group: {shown}",
            remedies=(Remedy("add_to_optimizer", note="rebuild the optimizer from them"),),
        )
