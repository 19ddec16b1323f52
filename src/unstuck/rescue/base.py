"""The action interface and the registry that discovers one action per file in ``actions/``.

An action changes the run in one reversible way. ``apply`` returns an undo token (tensors and
primitives, so ``torch.load(weights_only=True)`` reads it back); ``undo`` with that token puts
back exactly what ``apply`` changed. The engine additionally takes a full snapshot before every
action, so a rollback never depends on an action's undo alone.

An action that needs a handle the user's loop does not route through unstuck (clipping,
accumulation, a best snapshot) says so in ``unavailable``; the engine then skips it with that
reason, and the policy moves on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from unstuck.plugins import discover_plugins
from unstuck.rescue.controls import AccumulationControl, ClipControl, SkipControl, StopControl
from unstuck.rescue.lr_multiplier import LRMultiplier
from unstuck.types import ActionRecord

if TYPE_CHECKING:
    from unstuck.rescue.policy import Proposal

__all__ = ["Action", "Controls", "all_actions", "get_action"]


@dataclass
class Controls:
    """The handles an action may turn.

    ``best`` returns the Guard's best-validation snapshot (or ``None``) and ``restore`` puts a
    snapshot back into every live object, the Guard's own state included.
    """

    model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    lr: LRMultiplier
    scheduler: Any = None
    scaler: Any = None
    clip: ClipControl = field(default_factory=ClipControl)
    accumulation: AccumulationControl = field(default_factory=AccumulationControl)
    stop: StopControl = field(default_factory=StopControl)
    skip: SkipControl = field(default_factory=SkipControl)
    best: Callable[[], Any] = lambda: None
    restore: Callable[[Any], None] | None = None
    lr_locked: str | None = None  # why LR actions must not run (schedule-free, Prodigy), if so


class Action:
    """One reversible change to the run. Subclasses set ``name`` and implement apply/undo."""

    name: ClassVar[str]
    explanation: ClassVar[str] = ""
    example_params: ClassVar[dict[str, Any]] = {}  # valid parameters, for docs and conformance
    # Parameters validate() must refuse, one bad value per parameter it reads (and an unknown
    # key): the conformance test fails for an action that accepts any of them.
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = ()
    probe: ClassVar[bool] = False  # measures over the next steps, then the engine restores
    final: ClassVar[bool] = False  # ends the run's rescue (a stop): recorded, never verified
    changes_lr: ClassVar[bool] = False  # skipped for optimizers that set their own step size
    # Starts from the newest kept good state from before a rise (a rewind), not from the state
    # it finds; the engine skips it when no such state is held.
    rewinds: ClassVar[bool] = False

    def raises_lr(self, params: dict[str, Any]) -> bool:
        """Whether the action lengthens the steps along a slope for good (an LR raise,
        momentum added): the policy tries only these on a slow descent, never on an unstable
        run."""
        return False

    def cuts_lr(self, params: dict[str, Any]) -> bool:
        """Whether the action lowers the LR for good: a cut must make the loss better to stay
        (its cost, a slower descent, comes later than its verdict)."""
        return False

    def drives_loss_up(self, params: dict[str, Any]) -> bool:
        """Whether a blow-up found while the action is judged may be the action's own effect
        (an LR raised, a restart or a bump running, momentum added): the verdict judges it."""
        return self.raises_lr(params)

    def restarts(self, params: dict[str, Any]) -> bool:
        """Whether, proposed for a cause that restarts (``Rule.restart_remedies``), this
        change may start over from the run's first state."""
        return True

    def follow_up(self, kept: ActionRecord) -> Proposal | None:
        """The next verified step (a ``Proposal``) after ``kept``, this action's record, was
        kept; ``None``: none. Lets an action that moves in capped steps finish its move."""
        return None

    def after_rewind(self, params: dict[str, Any], steps: int) -> dict[str, Any]:
        """The parameters to apply once the engine rewound ``steps`` steps (``rewinds``
        actions only): lets a default depend on how far back the good state was."""
        return params

    def validate(self, params: dict[str, Any]) -> None:
        """Raise ValueError naming the bad value when ``params`` cannot be applied."""

    def unavailable(self, controls: Controls, params: dict[str, Any]) -> str | None:
        """Why this action cannot change this run (``None`` when it can)."""
        return None

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        raise NotImplementedError

    def describe(self, params: dict[str, Any]) -> str:
        """A short human label for the console, e.g. ``lr ×3``."""
        return self.name

    def duration(self, params: dict[str, Any]) -> int:
        """Optimizer steps during which the action's effect still changes after ``apply``.

        The engine verifies an action only after ``max(horizon, duration)`` steps: judging a
        warm restart halfway down its cosine would judge the peak, not the outcome. An instant
        change (a new multiplier, a new clip factor) returns 0.
        """
        return 0


_REGISTRY: dict[str, Action] = {}


def _discover() -> dict[str, Action]:
    if _REGISTRY:
        return _REGISTRY
    from unstuck.rescue import actions

    for module_name, cls in discover_plugins(actions, Action, "actions").items():
        if getattr(cls, "name", None) != module_name:
            raise ImportError(
                f"action {cls.__name__} has name {getattr(cls, 'name', None)!r}; "
                f"it must equal its module name {module_name!r}"
            )
        if not (cls.__doc__ or "").strip() or not cls.explanation.strip():
            raise ImportError(f"action {module_name!r} needs a docstring and an explanation")
        _REGISTRY[module_name] = cls()
    return _REGISTRY


def all_actions() -> dict[str, Action]:
    return dict(_discover())


def get_action(name: str) -> Action:
    registry = _discover()
    if name not in registry:
        raise KeyError(f"unknown action {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]
