"""Folding the engine's events into the run's action list (one entry per action)."""

from __future__ import annotations

from collections.abc import Sequence

from unstuck.types import ActionRecord, EngineEvent

__all__ = ["merge_action_events"]


def merge_action_events(
    actions: list[ActionRecord], events: Sequence[EngineEvent]
) -> list[ActionRecord]:
    """Fold the engine's action events into ``actions`` (one entry per action, identified by
    name and step, replaced by its latest version); returns the records the events carried, in
    order, for the console. The records travel typed: nothing is parsed back."""
    acted = []
    for event in events:
        record = event.record
        if record is None:
            continue
        acted.append(record)
        for i, known in enumerate(actions):
            if known.name == record.name and known.step == record.step:
                actions[i] = record
                break
        else:
            actions.append(record)
    return acted
