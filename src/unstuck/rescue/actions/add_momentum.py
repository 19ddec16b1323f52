"""Give plain SGD heavy-ball momentum: a longer stride along a consistent slope, same stability."""

from __future__ import annotations

from typing import Any, ClassVar

from unstuck.rescue.actions._params import check_keys, number
from unstuck.rescue.base import Action, Controls
from unstuck.signals.architecture import momentum_of

DEFAULT_MOMENTUM = 0.9  # the textbook heavy-ball coefficient (Sutskever et al. 2013; torch docs)


class AddMomentum(Action):
    """Set ``momentum`` on every param group of a momentum-free ``torch.optim.SGD``.

    Heavy ball (Polyak 1964) moves ``lr / (1 − β)`` per unit of a gradient that keeps its
    direction — ×10 at β = 0.9 — while a quadratic stays stable up to ``lr·λ_max < 2(1 + β)``,
    wider than plain gradient descent's 2. On a saddle the escape rate along the negative
    curvature grows by the same ``1 / (1 − β)`` (Jin, Netrapalli & Jordan 2018), so this is a
    faster way off a saddle or across a flat region than a bounded LR bump, without raising the
    step taken across a steep valley. Undo puts each group's momentum back and drops the
    momentum buffers the steps since have built.

    >>> AddMomentum().describe({"momentum": 0.9})
    'momentum 0 → 0.9'
    """

    name: ClassVar[str] = "add_momentum"
    explanation: ClassVar[str] = (
        "Turns on heavy-ball momentum (default 0.9) for plain SGD that runs without it. Along a "
        "direction the gradient keeps pointing in — a saddle's way down, a long shallow slope — "
        "momentum multiplies the distance covered per step by 1/(1 − momentum), ten times at "
        "0.9, while the largest stable step across a steep direction grows rather than shrinks. "
        "Only torch.optim.SGD with momentum 0 and no dampening is changed; adaptive optimizers "
        "already average their gradients. Undo restores momentum 0 and drops the buffers."
    )
    example_params: ClassVar[dict[str, Any]] = {"momentum": DEFAULT_MOMENTUM}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"momentum": 1.0},
        {"momentum": 0.0},
        {"momentum": "0.9"},
        {"beta": 0.9},
    )

    def _momentum(self, params: dict[str, Any]) -> float:
        check_keys(self.name, params, ("momentum",))
        value = number(self.name, params, "momentum", DEFAULT_MOMENTUM)
        if not 0.0 < value < 1.0:
            raise ValueError(f"add_momentum: 'momentum' must be in (0, 1), got {value!r}")
        return value

    def validate(self, params: dict[str, Any]) -> None:
        self._momentum(params)

    def raises_lr(self, params: dict[str, Any]) -> bool:
        return True  # a stride ×1/(1 − β) along a slope: an LR raise in effect

    def unavailable(self, controls: Controls, params: dict[str, Any]) -> str | None:
        optimizer = controls.optimizer
        current = momentum_of(optimizer)
        if current is None:
            return (
                f"add_momentum applies to torch.optim.SGD only, not {type(optimizer).__name__} "
                "(adaptive optimizers carry their own momentum)"
            )
        if current > 0.0:
            return f"add_momentum: SGD already runs with momentum {current:g}"
        groups = optimizer.param_groups
        if any(float(group.get("dampening", 0.0) or 0.0) != 0.0 for group in groups):
            return "add_momentum: SGD's dampening is set, so momentum would not lengthen the steps"
        return None

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        value = self._momentum(params)
        groups = controls.optimizer.param_groups
        before = [float(group.get("momentum", 0.0) or 0.0) for group in groups]
        for group in groups:
            group["momentum"] = value
        return {"momentum_before": before, "momentum_after": value}

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        optimizer = controls.optimizer
        for group, before in zip(optimizer.param_groups, token["momentum_before"]):
            group["momentum"] = float(before)
            if float(before) == 0.0:
                for p in group["params"]:
                    state = optimizer.state.get(p)
                    if state is not None:
                        state.pop("momentum_buffer", None)
                        if not state:
                            del optimizer.state[p]

    def describe(self, params: dict[str, Any]) -> str:
        return f"momentum 0 → {float(params.get('momentum', DEFAULT_MOMENTUM)):g}"
