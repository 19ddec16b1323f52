"""The engine's kept snapshots by name: one slot per purpose, each with the marks it is read by.

The engine keeps a few states beside the one an action or a probe started from
(:class:`KeptStates`): the best validation state (for a stop on the best state), a ring of the
last good states (to rewind to after a spike, a divergence or a non-finite loss), and the run's
first state (for an early restart). Each is a named slot of a :class:`SnapshotBook`, holding
at most one snapshot in the
:class:`~unstuck.rescue.snapshot.SnapshotStore` plus the step and value it was taken at.
Refilling a slot drops what it held, so no state is kept twice and none is leaked; the marks
outlive the snapshot, as the engine's decisions read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from unstuck.detect.detector import DEFAULT_FLAT_MARGIN, DEFAULT_Z, RECENT_FRACTION
from unstuck.rescue.snapshot import Snapshot, SnapshotMismatchError, SnapshotStore

__all__ = [
    "BEST",
    "GOOD_RING",
    "LAST_GOOD",
    "START",
    "KeptStates",
    "Slot",
    "SnapshotBook",
    "ring_every",
]

BEST, LAST_GOOD, START = "best", "last_good", "start"
RING_SIZE = 4  # good states kept: the newest (``LAST_GOOD``) and three older ones
GOOD_RING = (LAST_GOOD, *(f"good_{i}" for i in range(1, RING_SIZE)))  # newest first
LAST_GOOD_EVERY = 500  # the longest gap between refreshes of the ring on healthy flushes


def ring_every(step: int) -> int:
    """Steps between refreshes of the good-state ring at ``step``.

    The detector confirms a rise on its recent window, ``RECENT_FRACTION`` of the run's bins
    (its bins span the whole run), so a spike that began at step t₀ is confirmed at most about
    ``RECENT_FRACTION · step`` steps later. ``RING_SIZE`` entries this far apart span that
    window, so the state from before the spike is still held when the spike is confirmed;
    never more than ``LAST_GOOD_EVERY`` apart.
    """
    return min(LAST_GOOD_EVERY, max(1, math.ceil(RECENT_FRACTION * step / (RING_SIZE - 1))))


@dataclass
class Slot:
    """One kept snapshot (``key`` in the store, ``None``: empty) and its marks."""

    key: str | None = None
    step: int = 0  # the step it was taken at
    value: float = math.inf  # what it is compared by (a validation loss, a loss level)
    stderr: float = 0.0  # the standard error of ``value`` (a loss level's), when known


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

    def shift(self, names: Sequence[str]) -> None:
        """Age a ring: drop the last slot's snapshot, move each slot one place along ``names``
        and leave the first empty (its step kept, so the next refresh is timed from it)."""
        last = self._slots[names[-1]]
        self.store.drop(last.key)
        first = self._slots[names[0]]
        for newer, older in zip(names[-2::-1], names[:0:-1]):
            self._slots[older] = self._slots[newer]
        self._slots[names[0]] = Slot(step=first.step)

    def empty_key(self, key: str) -> None:
        """Drop the store's snapshot ``key`` and empty every slot that held it."""
        for slot in self._slots.values():
            if slot.key == key:
                slot.key = None
        self.store.drop(key)


class KeptStates:
    """The best, last good (a ring) and first states of the run, and when each is kept or let
    go.

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
        ring = {name: Slot(step=-LAST_GOOD_EVERY) for name in GOOD_RING}
        slots = {BEST: Slot(), **ring, START: Slot()}
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

    def note_good(self, step: int, level: float, force: bool, stderr: float = 0.0) -> None:
        """Keep the state at ``step`` as the newest good one, at most every
        :func:`ring_every` steps (``force``: now); the oldest of the ring is let go. ``level``,
        its loss, is what a later return must beat; ``stderr``, that level's standard error."""
        if not force and step - self.book[LAST_GOOD].step < ring_every(step):
            return
        self.book.shift(GOOD_RING)
        level = level if math.isfinite(level) else math.inf
        self.book.fill(LAST_GOOD, self._capture(step), step=step, value=level)
        self.book[LAST_GOOD].stderr = stderr if math.isfinite(stderr) else 0.0

    def worse_than_last_good(self, level: float) -> bool:
        """Whether a kept good state's loss is below ``level``."""
        return self.before_rise(level) is not None

    def before_rise(self, level: float = math.inf) -> str | None:
        """The slot of the newest good state from before a rise to ``level``: among the held
        states whose loss is below ``level``, the newest not above the lowest of them by more
        than the detector's least rise (``DEFAULT_FLAT_MARGIN``, 2 % in log units) or by more
        than ``DEFAULT_Z`` standard errors of the difference of the two flush means. A state
        taken while the spike was already under way, before the detector confirmed it, sits
        above that and is passed over; one that differs from the lowest by minibatch noise
        alone is not. ``None``: none is held."""
        held = [
            (name, self.book[name])
            for name in GOOD_RING
            if self.book[name].key is not None and self.book[name].value < level
        ]
        if not held:
            return None
        low = min((slot for _, slot in held), key=lambda slot: slot.value)
        margin = DEFAULT_FLAT_MARGIN * abs(low.value)
        if low.value > 0:
            margin = low.value * math.expm1(DEFAULT_FLAT_MARGIN)
        for name, slot in held:  # newest first
            noise = DEFAULT_Z * math.hypot(slot.stderr, low.stderr)
            if slot.value - low.value <= max(margin, noise):
                return name
        return None

    def forget_newer(self, name: str) -> None:
        """Drop the ring's states newer than slot ``name`` (after a return to it, they belong
        to the branch thrown away)."""
        for newer in GOOD_RING[: GOOD_RING.index(name)]:
            self.book.empty(newer)

    def held_good(self) -> list[int]:
        """The steps of the good states held, newest first."""
        return [self.book[n].step for n in GOOD_RING if self.book[n].key is not None]

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
