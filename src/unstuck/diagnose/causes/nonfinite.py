"""NaN or Inf in the loss or the gradients."""

from __future__ import annotations

from typing import ClassVar

from unstuck.diagnose.base import Rule
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy


class NonFinite(Rule):
    """The loss or a gradient became NaN/Inf in the latest window: the run is broken, not stuck."""

    code: ClassVar[str] = "nonfinite"
    requires: ClassVar[frozenset[str]] = frozenset({"nonfinite_loss"})
    continuous: ClassVar[bool] = True
    lr_raise_effect: ClassVar[bool] = True  # an LR raise being judged can overflow by itself
    broken_state: ClassVar[bool] = True  # a remedy starts from the last finite state
    explanation: ClassVar[str] = (
        "A loss or gradient value was NaN or infinite. Common causes: a learning rate so high the "
        "weights overflow, log(0) or division by zero in the loss, fp16 overflow without a "
        "GradScaler, or bad input values. unstuck records the values (never crashes) and, under "
        "policy='rescue', puts the run back to its last state with a finite loss (a snapshot "
        "the engine refreshes while the run is healthy, docs/rescue.md), lowers the LR ×0.1 "
        "and verifies the effect. A NaN in the data or an unguarded log/div in the loss comes "
        "back after the restore: check those first when the finding repeats."
    )

    def check(self, ev: Evidence) -> Finding | None:
        loss_bad = float(ev.values_of("nonfinite_loss")[-1:].sum())
        grad_bad = float(ev.values_of("nonfinite_grad")[-1:].sum())
        if loss_bad + grad_bad <= 0:
            return None
        return Finding(
            cause=self.code,
            confidence=1.0,
            evidence={
                "nonfinite_losses_in_window": loss_bad,
                "nonfinite_grad_steps_in_window": grad_bad,
                "nonfinite_losses_total": float(ev.get("nonfinite_loss_total", loss_bad)),
            },
            step=ev.step,
            summary=f"{int(loss_bad)} non-finite losses and {int(grad_bad)} steps with "
            "non-finite gradients in the latest window",
            remedies=(Remedy("lr_scale", {"factor": 0.1}, automatic=True),),
        )
