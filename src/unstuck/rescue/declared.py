"""What the rescue reads of the plugins, by name: the attributes actions and rules declare.

The engine, the policy and the probes name no action or cause; a proposal or a record carries
a name, and what matters about it (an action that cuts the LR, a cause whose remedy restarts,
a cause that a pending LR raise may produce) is looked up here in the registries.
"""

from __future__ import annotations

from unstuck.diagnose.base import Rule, all_rules
from unstuck.rescue.base import Action, all_actions

__all__ = ["action_declares", "cause_declares", "registered_action", "rule_of"]


def registered_action(name: str) -> Action | None:
    """The registered action ``name`` (``None``: a probe of its own, or no action)."""
    return all_actions().get(name)


def rule_of(cause: str | None) -> Rule | None:
    """The registered rule of ``cause`` (``None``: no cause, or none by that name)."""
    return all_rules().get(cause) if cause else None


def cause_declares(cause: str | None, flag: str) -> bool:
    """Whether the rule of ``cause`` declares ``flag`` (a boolean ``Rule`` attribute)."""
    rule = rule_of(cause)
    return rule is not None and bool(getattr(rule, flag))


def action_declares(name: str, flag: str) -> bool:
    """Whether the registered action ``name`` declares ``flag`` (a boolean ``Action``
    attribute); a probe that is no action declares none."""
    action = registered_action(name)
    return action is not None and bool(getattr(action, flag))
