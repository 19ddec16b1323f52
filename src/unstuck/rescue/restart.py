"""Where an action starts from: the state it found, a kept good state, or the run's first.

Most actions start from the state the policy found them in. Three kinds start elsewhere, as
their plugins declare: a rewind (``Action.rewinds``), a remedy for a broken state
(``Rule.broken_state``: a non-finite loss), or any remedy on a diverging run whose loss is
above a kept good state's, retries from the newest good state from before the rise
(``KeptStates.before_rise``); a remedy its cause restarts (``Rule.restart_remedies``, when
``Action.restarts`` allows it for its parameters) decided within one horizon of the start
goes back to the run's first state, since the damage of the first steps is not undone by a
later change.
"""

from __future__ import annotations

from unstuck.rescue.declared import action_declares, cause_declares, registered_action, rule_of
from unstuck.rescue.policy import Proposal
from unstuck.rescue.snapshot_book import KeptStates

__all__ = ["good_state_to_return", "restarts_from_start"]


def good_state_to_return(
    kept: KeptStates, proposal: Proposal, state: str, level: float
) -> str | None:
    """The kept good state's slot to restore before ``proposal`` (``None``: none): for a
    rewind, or when the loss went non-finite, or the run diverges, the newest good state from
    before the rise, whose loss was lower than the loss now (``level``). A final action (a stop
    on the best state) puts back a state of its own."""
    if action_declares(proposal.action, "final"):
        return None
    if cause_declares(proposal.cause, "broken_state"):
        return kept.before_rise()
    if action_declares(proposal.action, "rewinds") or state == "diverging":
        return kept.before_rise(level)
    return None


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
