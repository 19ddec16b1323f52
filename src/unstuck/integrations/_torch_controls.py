"""The handles a Guard lends to actions over a torch loop: the LR multiplier, clipping, owned
gradient accumulation and the stop request, and the part of the loop's state that snapshots
must carry besides the model and optimizer (gradients summed mid-accumulation).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from unstuck.rescue import Controls, LRMultiplier
from unstuck.rescue.controls import AccumulationControl, ClipControl, SkipControl, StopControl
from unstuck.signals.hub import SignalHub

__all__ = ["SELF_TUNING_OPTIMIZERS", "TorchControls", "drop_gradients"]

logger = logging.getLogger("unstuck")

# Optimizers that set their own step size: unstuck leaves their LR alone (see docs/rescue.md).
SELF_TUNING_OPTIMIZERS = {
    "schedulefree": "schedule-free optimizers average their iterates with LR-dependent weights",
    "prodigyopt": "Prodigy estimates its own step size (d) from the LR it is given",
}


def lr_lock_reason(optimizer: torch.optim.Optimizer) -> str | None:
    """Why LR actions must leave this optimizer alone (``None``: they may act)."""
    package = type(optimizer).__module__.split(".")[0]
    why = SELF_TUNING_OPTIMIZERS.get(package)
    if why is None:
        return None
    return (
        f"{type(optimizer).__name__} sets its own step size ({why}); unstuck detects and "
        "diagnoses but leaves its LR alone (LR actions are skipped with this reason)"
    )


def drop_gradients(
    params: list[torch.Tensor], optimizer: torch.optim.Optimizer, scaler: Any
) -> None:
    """Set every ``.grad`` in ``params`` to None so the coming ``optimizer.step()`` leaves
    them alone: torch's optimizers pass over a parameter without a gradient (no update, no
    moment decay, no weight decay, no step count).

    A GradScaler that has not unscaled this step's gradients yet would find none to unscale in
    ``scaler.step`` and refuse the step ("No inf checks were recorded for this optimizer"), so
    it unscales them first: its ``step`` and ``update`` then see an ordinary inf check.
    """
    enabled = getattr(scaler, "is_enabled", None)
    if callable(enabled) and enabled():
        # A second unscale_ before update() is a RuntimeError by GradScaler's documented
        # contract: the gradients are then already unscaled and their inf check recorded.
        with contextlib.suppress(RuntimeError):
            scaler.unscale_(optimizer)
    for p in params:
        p.grad = None


class TorchControls:
    """Built in two steps around the signal hub, because hook order matters: the averaging of
    owned accumulation runs before the hub's hooks (every signal reads the averaged gradient),
    the LR multiplier after them (the LR tap records the user's own schedule).

    ``accumulation_steps`` is validated here (a one-line error before any hook is added).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accumulation_steps: int | None) -> None:
        self.optimizer = optimizer
        self.accumulation = AccumulationControl(accumulation_steps)  # validates the argument
        self.clip = ClipControl()
        self.stop = StopControl()
        self.skip = SkipControl()
        self.accumulated = 0  # micro-batches summed into .grad since the last optimizer step
        self._hub: SignalHub | None = None
        self._average_hook = (
            optimizer.register_step_pre_hook(self._average_accumulated)
            if self.accumulation.owned
            else None
        )
        self.lr: LRMultiplier | None = None

    def attach(
        self, hub: SignalHub, model: torch.nn.Module, scheduler: Any, scaler: Any
    ) -> Controls:
        """After the hub's hooks: the LR multiplier, and the handles actions get."""
        self._hub = hub
        if self.accumulation.owned:
            hub.ctx.intended_opt_steps = 0
        self.lr = LRMultiplier(self.optimizer)
        return Controls(
            model,
            self.optimizer,
            self.lr,
            scheduler,
            scaler,
            clip=self.clip,
            accumulation=self.accumulation,
            stop=self.stop,
            skip=self.skip,
            lr_locked=lr_lock_reason(self.optimizer),
        )

    @property
    def params(self) -> list[torch.Tensor]:
        return [] if self._hub is None else list(self._hub.ctx.params)

    def should_step(self) -> bool:
        """One micro-batch more; True when it completes an optimizer step (see Guard)."""
        if not self.accumulation.owned:
            return True
        self.accumulated += 1
        if self.accumulated < self.accumulation.steps:
            return False
        if self._hub is not None:
            ctx = self._hub.ctx
            ctx.intended_opt_steps = (ctx.intended_opt_steps or 0) + 1
        return True

    def _average_accumulated(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        count, self.accumulated = self.accumulated, 0
        if count <= 1:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / count)

    # -- snapshots ------------------------------------------------------------------------------
    def capture(self) -> dict[str, Any]:
        """A flush may land mid-window: the gradients summed so far belong to the state, or a
        rollback would resume the window with the thrown-away branch's partial sums."""
        extra: dict[str, Any] = {"accumulated": self.accumulated}
        if self.accumulation.owned:
            extra["grads"] = [p.grad for p in self.params]  # cloned by the snapshot
        return extra

    def restore(self, extra: dict[str, Any]) -> None:
        self.accumulated = int(extra.get("accumulated", 0))
        grads = extra.get("grads")
        params = self.params
        if grads is None or len(grads) != len(params):
            return
        for p, grad in zip(params, grads):
            if grad is None:
                p.grad = None
            elif p.grad is not None and p.grad.shape == grad.shape:
                p.grad.copy_(grad)
            else:
                p.grad = grad.to(device=p.device, dtype=p.dtype, copy=True)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip.state_dict(),
            "accumulation": self.accumulation.state_dict(),
            "stop": self.stop.state_dict(),
            "skip": self.skip.state_dict(),
            "accumulated": self.accumulated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip.load_state_dict(state.get("clip", {}))
        self.accumulation.load_state_dict(state.get("accumulation", {}))
        self.stop.load_state_dict(state.get("stop", {}))
        self.skip.load_state_dict(state.get("skip", {}))
        self.accumulated = int(state.get("accumulated", 0))

    def close(self) -> None:
        if self.lr is not None:
            self.lr.close()
        if self._average_hook is not None:
            self._average_hook.remove()
