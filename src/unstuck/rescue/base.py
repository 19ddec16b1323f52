"""The action interface and the registry that discovers one action per file in ``actions/``.

An action changes the run in one reversible way. ``apply`` returns an undo token of primitives;
``undo`` with that token puts back exactly what ``apply`` changed. The engine additionally takes
a full snapshot before every action, so a rollback never depends on an action's undo alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from unstuck.plugins import discover_plugins
from unstuck.rescue.lr_multiplier import LRMultiplier

__all__ = ["Action", "Controls", "all_actions", "get_action"]


@dataclass
class Controls:
    """The handles an action may turn."""

    model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    lr: LRMultiplier
    scheduler: Any = None
    scaler: Any = None


class Action:
    """One reversible change to the run. Subclasses set ``name`` and implement apply/undo."""

    name: ClassVar[str]
    explanation: ClassVar[str] = ""
    example_params: ClassVar[dict[str, Any]] = {}  # valid parameters, for docs and conformance

    def validate(self, params: dict[str, Any]) -> None:
        """Raise ValueError naming the bad value when ``params`` cannot be applied."""

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        raise NotImplementedError

    def describe(self, params: dict[str, Any]) -> str:
        """A short human label for the console, e.g. ``lr ×3``."""
        return self.name


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
