"""Where an action starts from: the state it found, the last good state, or the run's first.

Most actions start from the state the policy found them in. Two kinds start elsewhere, as their
plugins declare: a remedy for a broken state (``Rule.broken_state``: a non-finite loss), or any
remedy on a diverging run whose loss is above the last good state's, retries from that last good
state; a remedy its cause restarts (``Rule.restart_remedies``, when ``Action.restarts`` allows
it for its parameters) decided within one horizon of the start goes back to the run's first
state, since the damage of the first steps is not undone by a later change.
"""

from __future__ import annotations

from unstuck.rescue.declared import action_declares, cause_declares, registered_action, rule_of
from unstuck.rescue.policy import Proposal
from unstuck.rescue.snapshot_book import LAST_GOOD, KeptStates

__all__ = ["restarts_from_start", "returns_to_last_good"]


def returns_to_last_good(kept: KeptStates, proposal: Proposal, state: str, level: float) -> bool:
    """Whether to restore the last good state before ``proposal``: the loss went non-finite
    (or the run diverges) and that state's loss was lower than the loss now, ``level``. A final
    action (a stop on the best state) puts back a state of its own."""
    if kept.book[LAST_GOOD].key is None or action_declares(proposal.action, "final"):
        return False
    if cause_declares(proposal.cause, "broken_state"):
        return True
    return state == "diverging" and kept.worse_than_last_good(level)


def restarts_from_start(kept: KeptStates, step: int, proposal: Proposal) -> bool:
    """Whether ``proposal`` starts over from the run's first state: its cause declares it a
    restart remedy, the action allows it for these parameters, and the start is recent."""
    rule = rule_of(proposal.cause)
    if rule is None or proposal.action not in rule.restart_remedies:
        return False
    action = registered_action(proposal.action)
    return (
        kept.start_within_horizon(step) and action is not None and action.restarts(proposal.params)
    )
