"""Clear the optimizer's per-parameter state (moments, step counts) so it rebuilds from now."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from unstuck.rescue.actions._params import check_keys
from unstuck.rescue.base import Action, Controls
from unstuck.rescue.snapshot import _clone


def _known_layout(optimizer: torch.optim.Optimizer) -> bool:
    """True for torch's own optimizers, whose per-parameter state is only moments and counts."""
    module = type(optimizer).__module__
    return module == "torch.optim" or module.startswith("torch.optim.")


def _ordered_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the order ``optimizer.state_dict()`` numbers its state keys."""
    return [p for group in optimizer.param_groups for p in group["params"]]


class ResetOptimizerState(Action):
    """Drop every parameter's ``optimizer.state``; torch optimizers re-create it lazily.

    Stale state — moments carried over from a resume onto a different loss scale, or from a
    previous task — keeps steering (Adam's second moment can shrink every step for
    ``1/(1−β₂)`` steps). Undo puts every tensor back by parameter, without
    ``optimizer.load_state_dict``: that would replace the param-group dicts that schedulers and
    user code hold, and cast the state the optimizer's own way.

    >>> ResetOptimizerState().describe({})
    'reset optimizer state'
    """

    name: ClassVar[str] = "reset_optimizer_state"
    explanation: ClassVar[str] = (
        "Clears the optimizer's per-parameter state — momentum buffers, Adam's first and "
        "second moments and their step counts — so it is rebuilt from the next gradients. "
        "This helps when that state is stale: moments carried over from a resumed checkpoint, "
        "a change of loss scale or task, or a second moment inflated by a past spike, which "
        "keeps every step too small for thousands of steps. Learning rates and your scheduler "
        "are untouched; Adam's bias correction restarts, so its first steps move each weight "
        "by about the learning rate."
    )
    example_params: ClassVar[dict[str, Any]] = {}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = ({"factor": 2.0},)

    def validate(self, params: dict[str, Any]) -> None:
        check_keys(self.name, params, ())

    def unavailable(self, controls: Controls, params: dict[str, Any]) -> str | None:
        optimizer = controls.optimizer
        if not _known_layout(optimizer):
            return (
                f"reset_optimizer_state: unknown state layout of {type(optimizer).__name__}; "
                "its state may hold more than moments (schedule-free keeps its iterate z there)"
            )
        if not any(optimizer.state.values()):
            return "reset_optimizer_state: the optimizer holds no per-parameter state yet"
        return None

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        self.validate(params)
        optimizer = controls.optimizer
        saved: dict[int, Any] = {}
        for i, p in enumerate(_ordered_params(optimizer)):
            if p in optimizer.state:
                saved[i] = _clone(optimizer.state.pop(p))
        return {"state": saved}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        optimizer = controls.optimizer
        params = _ordered_params(optimizer)
        for p in params:
            optimizer.state.pop(p, None)  # state rebuilt since apply
        for i, state in token["state"].items():
            # A clone, so the live state never aliases the token (the engine may keep it).
            optimizer.state[params[int(i)]] = _clone(state)

    def describe(self, params: dict[str, Any]) -> str:
        return "reset optimizer state"
