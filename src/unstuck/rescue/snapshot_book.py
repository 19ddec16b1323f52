"""The engine's kept snapshots by name: one slot per purpose, each with the marks it is read by.

The engine keeps a few states beside the one an action or a probe started from: the best
validation state (for ``keep_best_and_stop``), the last good state (to retry from after a
non-finite loss), and the run's first state (for an early restart). Each is a named slot
holding at most one snapshot in the :class:`~unstuck.rescue.snapshot.SnapshotStore`, plus the
step and value it was taken at. Refilling a slot drops what it held, so no state is kept twice
and none is leaked; the marks outlive the snapshot (a dropped best keeps its value only when
the caller says so), as the engine's decisions read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unstuck.rescue.snapshot import Snapshot, SnapshotStore

__all__ = ["Slot", "SnapshotBook"]


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
