"""Log hygiene: steps that go backwards, before any series is analysed.

A log on disk is often not one clean run. The detector needs one trajectory in step order, and
sorting by step silently interleaves whatever shares a step (two epochs, two runs) into a zigzag
that reads as oscillation. Three shapes are common, each handled here once for every reader:

* **a step counter that restarts every epoch** (``Epoch 1 | Step 0/6501``): the step goes back
  exactly when the epoch goes up. The x axis is made continuous, ``x = epoch index × steps per
  epoch + step`` (:func:`continuous_steps`, called where records get their x axis, ``_records``).
* **a resumed run** (``--resume`` from a checkpoint, a CSVLogger with ``append=True`` restarted
  at its ``initial_epoch``): the step goes back to where the checkpoint was taken. Later records
  replace earlier ones at the same or later steps (the surviving trajectory, as TensorBoard
  purges orphaned events), the points before the restart step are kept.
* **several runs in one file** (a printout pasted run after run, a CSVLogger file appended to
  by each fresh start): the step goes back to the start of what was kept (at most
  ``FRESH_SHARE`` of it survives). The same rule keeps the **last run**: it is the one the file
  ends with, most often the one the user is asking about, and for a resumed run the surviving
  trajectory is that same run. A note says how many runs the file holds.

Consecutive points at one step (gradient accumulation, a train and an eval value printed under
one name) are no restart: they stay. Per-epoch tags with a step counter of their own
(``valid_loss_step/epoch_0``, steps = batch index in that epoch) are no time series of the run:
they are left out (:func:`clean_series`, called by ``_common.build_run`` on every reader's raw
series in the order the log holds them). Each fix adds one line to ``meta["notes"]``.
"""

from __future__ import annotations

import bisect
import itertools
import re
import statistics
from collections.abc import Mapping, Sequence

__all__ = ["FRESH_SHARE", "PER_EPOCH_TAG", "clean_series", "continuous_steps", "count_runs"]

# A restart that keeps at most this share of the points before it (or one point) starts a new
# run; one that keeps more resumes the run from a checkpoint.
FRESH_SHARE = 0.05
# ``<series>/epoch_3``, ``<series>_epoch3``: one tag per epoch, x = position within the epoch.
HELD_OUT = re.compile(r"(val|valid|validation|eval|test|dev)\b|(val|eval|test)_", re.IGNORECASE)
PER_EPOCH_TAG = re.compile(r"^(?P<stem>.+?)[/_.]epoch_?(?P<n>\d+)$", re.IGNORECASE)

Points = tuple[Sequence[int], Sequence[float]]


def continuous_steps(
    steps: Sequence[int | None], epochs: Sequence[float | None]
) -> tuple[list[int | None], str | None]:
    """Steps made continuous when the counter restarts every epoch, and a note; else as given.

    ``steps[i]`` and ``epochs[i]`` are record i's step and epoch (None where it has none). The
    counter restarts per epoch when it goes back at least once and every time it goes back the
    epoch went up. Then ``x = (epoch − first epoch) × steps per epoch + step``, with steps per
    epoch the largest step logged plus the usual stride, so the spacing stays even across the
    epoch boundary. A record without an epoch takes the one before it.
    """
    out = list(steps)
    epoch_of: list[float | None] = []
    last: float | None = None
    for e in epochs:
        last = e if e is not None else last
        epoch_of.append(last)
    prev: tuple[int, float] | None = None
    backs = 0
    for s, e in zip(steps, epoch_of):
        if s is None or e is None:
            continue
        if prev is not None and s < prev[0]:
            if e <= prev[1]:
                return out, None  # went back within an epoch: a restart, handled as runs
            backs += 1
        prev = (s, e)
    if not backs:
        return out, None
    known = [s for s in steps if s is not None]
    strides = [b - a for a, b in itertools.pairwise(known) if b > a]
    stride = round(statistics.median(strides)) if strides else 1
    per_epoch = max(known) + max(stride, 1)
    first = min(e for e in epoch_of if e is not None)
    for i, (s, e) in enumerate(zip(steps, epoch_of)):
        if s is not None and e is not None:
            out[i] = round(e - first) * per_epoch + s
    note = (
        f"the step counter restarts every epoch ({backs + 1} epochs): x = epoch × {per_epoch} "
        "+ step, so the epochs follow each other instead of sharing steps"
    )
    return out, note


class _Runs:
    """One series split into its runs: each run's surviving trajectory, in step order."""

    def __init__(self, steps: Sequence[int], values: Sequence[float]) -> None:
        self.runs: list[tuple[list[int], list[float]]] = [([], [])]
        self.resumed = 0  # restarts within a run (resumed from a checkpoint)
        for s, v in zip(steps, values):
            kept_s, kept_v = self.runs[-1]
            if kept_s and s < kept_s[-1]:
                k = bisect.bisect_left(kept_s, s)  # kept steps never decrease
                if k <= max(1, int(FRESH_SHARE * len(kept_s))):
                    self.runs.append(([], []))  # a new run: nothing of this one survives in it
                    kept_s, kept_v = self.runs[-1]
                else:
                    self.resumed += 1
                    del kept_s[k:], kept_v[k:]
            kept_s.append(s)
            kept_v.append(v)


def _per_epoch_tags(names: Sequence[str], raw: Mapping[str, Points]) -> list[str]:
    """Tags that repeat per epoch with their own step counter (TensorBoard's
    ``valid_loss_step/epoch_0``): two or more with one stem, or one whose steps start at 0."""
    stems: dict[str, list[str]] = {}
    for name in names:
        match = PER_EPOCH_TAG.match(name)
        if match:
            stems.setdefault(match.group("stem").lower(), []).append(name)
    out: list[str] = []
    for group in stems.values():
        starts = [min(raw[n][0]) for n in group if len(raw[n][0])]
        if len(group) > 1 or (starts and starts[0] <= 1):
            out += group
    return out


def count_runs(raw: Mapping[str, Points]) -> int:
    """How many runs the log holds one after another (1 for a clean log)."""
    return max((len(_Runs(*points).runs) for points in raw.values()), default=1)


def clean_series(
    raw: Mapping[str, Points], step_unit: str = "step", run: int | None = None
) -> tuple[dict[str, Points], list[str]]:
    """``raw`` (series in the order the log holds their points) with every series one
    trajectory in step order, per-epoch tags left out; and one note per fix.

    A file of several runs keeps its last run, or run number ``run`` (1 = the first); then a
    series logged in fewer runs than the file holds cannot be placed and is left out. A
    ``run`` the file does not hold is a ``ValueError``.
    """
    notes: list[str] = []
    dropped = _per_epoch_tags(list(raw), raw)
    if dropped:
        shown = ", ".join(dropped[:3]) + (" …" if len(dropped) > 3 else "")
        notes.append(
            f"{len(dropped)} per-epoch tag{'s' * (len(dropped) > 1)} left out ({shown}): "
            "their steps count batches within one epoch, not the run's steps"
        )
    split = {name: _Runs(*points) for name, points in raw.items() if name not in dropped}
    n_runs = max((len(r.runs) for r in split.values()), default=1)
    if run is not None and not 1 <= run <= n_runs:
        held = f"holds {n_runs} runs" if n_runs > 1 else "holds one run"
        raise ValueError(f"--run {run}: the log {held} (--run 1 to {n_runs})")
    index = n_runs - 1 if run is None else run - 1
    out: dict[str, Points] = {}
    unplaced: list[str] = []
    for name, runs in split.items():
        if run is not None and n_runs > 1 and len(runs.runs) != n_runs:
            unplaced.append(name)
            continue
        out[name] = runs.runs[index] if len(runs.runs) == n_runs else runs.runs[-1]
    # the series a note names: most restarts, the training loss first, then the longest
    restarted = [
        (len(r.runs) - 1 + r.resumed, "loss" in n.lower(), not HELD_OUT.match(n), len(out[n][0]), n)
        for n, r in split.items()
        if n in out and (len(r.runs) > 1 or r.resumed)
    ]
    if not restarted:
        return out, notes
    name = max(restarted)[-1]
    kept, points = out[name][0], len(out[name][0])
    span = f"{step_unit}s {kept[0]}–{kept[-1]}" if points else "no points"
    if n_runs > 1:
        which = "the last" if run is None else f"run {run} (--run {run})"
        left = sum(len(s) for i, (s, _) in enumerate(split[name].runs) if i != index)
        notes.append(
            f"the log holds {n_runs} runs ({step_unit}s start over {n_runs - 1} "
            f"time{'s' * (n_runs > 2)}): {which} is analysed ({name}: {points} points, {span}); "
            f"{left} points of the other runs left out"
            + ("" if run is not None else f"; --run 1 to {n_runs} picks another")
        )
    if unplaced:
        notes.append(
            f"{', '.join(unplaced[:3])}{' …' if len(unplaced) > 3 else ''}: logged in fewer runs "
            f"than the log holds, left out of run {run}"
        )
    resumed = max(r.resumed for r in split.values())
    if resumed:
        notes.append(
            f"{step_unit}s go back {resumed} time{'s' * (resumed > 1)} (a run resumed from a "
            f"checkpoint): later records replace earlier ones from the {step_unit} they "
            f"restart at ({name}: {points} points kept, {span})"
        )
    return out, notes
