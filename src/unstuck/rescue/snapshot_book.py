"""The engine's kept snapshots by name: one slot per purpose, each with the marks it is read by.

The engine keeps a few states beside the one an action or a probe started from
(:class:`KeptStates`): the best validation state (for a stop on the best state), the last good
state (to retry from after a non-finite loss), and the run's first state (for an early
restart). Each is a named slot of a :class:`SnapshotBook`, holding at most one snapshot in the
:class:`~unstuck.rescue.snapshot.SnapshotStore` plus the step and value it was taken at.
Refilling a slot drops what it held, so no state is kept twice and none is leaked; the marks
outlive the snapshot, as the engine's decisions read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unstuck.rescue.snapshot import Snapshot, SnapshotMismatchError, SnapshotStore

__all__ = ["BEST", "LAST_GOOD", "START", "KeptStates", "Slot", "SnapshotBook"]

BEST, LAST_GOOD, START = "best", "last_good", "start"
LAST_GOOD_EVERY = 500  # steps between refreshes of the last-good snapshot on healthy flushes


@dataclass
class Slot:
    """One kept snapshot (``key`` in the store, ``None``: empty) and its marks."""

    key: str | None = None
    step: int = 0  # the step it was taken at
    value: float = math.inf  # what it is compared by (a validation loss, a loss level)


class SnapshotBook:
    """Named slots over one :class:`SnapshotStore`."""

    def __init__(self, store: SnapshotStore, slots: dict[str, Slot]) -> None:
        self.store = store
        self._slots = dict(slots)

    def __getitem__(self, name: str) -> Slot:
        return self._slots[name]

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def names(self) -> list[str]:
        return list(self._slots)

    def fill(
        self, name: str, snap: Snapshot, *, step: int | None = None, value: float | None = None
    ) -> str:
        """Keep ``snap`` in slot ``name`` (dropping what it held); returns its store key."""
        slot = self._slots[name]
        self.store.drop(slot.key)
        slot.key = self.store.put(snap)
        if step is not None:
            slot.step = step
        if value is not None:
            slot.value = value
        return slot.key

    def get(self, name: str) -> Snapshot | None:
        """The snapshot in slot ``name``, or ``None`` when it is empty."""
        key = self._slots[name].key
        return self.store.get(key) if key is not None else None

    def empty(self, name: str) -> None:
        """Drop slot ``name``'s snapshot; its marks stay."""
        slot = self._slots[name]
        self.store.drop(slot.key)
        slot.key = None

    def empty_key(self, key: str) -> None:
        """Drop the store's snapshot ``key`` and empty every slot that held it."""
        for slot in self._slots.values():
            if slot.key == key:
                slot.key = None
        self.store.drop(key)


class KeptStates:
    """The best, last good and first states of the run, and when each is kept or let go.

    ``capture``/``restore`` are the engine's (a front-end may override them); ``refused``
    turns a restore that does not fit into the one-line reason the engine logs once.
    """

    def __init__(
        self,
        store: SnapshotStore,
        horizon: int,
        capture: Callable[[int], Snapshot],
        restore: Callable[[Snapshot], None],
        refused: Callable[[SnapshotMismatchError], Any],
    ) -> None:
        # The last good state's step starts one refresh back: the first healthy flush keeps it.
        slots = {BEST: Slot(), LAST_GOOD: Slot(step=-LAST_GOOD_EVERY), START: Slot()}
        self.book = SnapshotBook(store, slots)
        self.horizon = horizon
        self._capture, self._restore, self._refused = capture, restore, refused

    def best(self) -> Snapshot | None:
        return self.book.get(BEST)

    def note_best(self, step: int, value: float) -> None:
        """Keep the state at ``step`` when ``value`` (finite) beats the best so far."""
        if not math.isfinite(value) or value >= self.book[BEST].value:
            return
        self.book[BEST].value = value
        self.book.empty(BEST)
        self.book.fill(BEST, self._capture(step))

    def forget_best(self) -> None:
        """The best state no longer fits the run: drop it and its value."""
        if self.book[BEST].key is not None:
            self.book.empty(BEST)
            self.book[BEST].value = math.inf

    def note_good(self, step: int, level: float, force: bool) -> None:
        """Keep the state at ``step`` as the last good one, at most every ``LAST_GOOD_EVERY``
        steps (``force``: now); ``level``, its loss, is what a later return must beat."""
        if not force and step - self.book[LAST_GOOD].step < LAST_GOOD_EVERY:
            return
        self.book.empty(LAST_GOOD)
        level = level if math.isfinite(level) else math.inf
        self.book.fill(LAST_GOOD, self._capture(step), step=step, value=level)

    def worse_than_last_good(self, level: float) -> bool:
        return self.book[LAST_GOOD].key is not None and level > self.book[LAST_GOOD].value

    def note_start(self, step: int) -> None:
        self.book.empty(START)
        self.book.fill(START, self._capture(step), step=step)

    def forget_start(self) -> None:
        self.book.empty(START)

    def start_within_horizon(self, step: int) -> bool:
        """Whether the first state is held and at most one horizon old (else it is let go)."""
        start = self.book[START]
        if start.key is not None and step - start.step > self.horizon:
            self.forget_start()  # past the restart window: free the memory
        return self.book[START].key is not None

    def return_to(self, name: str) -> Snapshot | None:
        """Restore the state in slot ``name`` if it still fits the run; else drop it."""
        snap = self.book.get(name)
        if snap is None:
            return None
        try:
            self._restore(snap)
        except SnapshotMismatchError as exc:
            self._refused(exc)
            self.book.empty(name)
            return None
        return snap

    def state_dict(self) -> dict[str, Any]:
        best = self.best()
        return {"best_value": self.book[BEST].value, "best": best.to_dict() if best else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.book.empty(BEST)
        self.book[BEST].value = float(state.get("best_value", math.inf))
        best = state.get("best")
        if best:
            self.book.fill(BEST, Snapshot.from_dict(best))
