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

__all__ = ["FRESH_SHARE", "PER_EPOCH_TAG", "clean_series", "continuous_steps"]

# A restart that keeps at most this share of the points before it (or one point) starts a new
# run; one that keeps more resumes the run from a checkpoint.
FRESH_SHARE = 0.05
# ``<series>/epoch_3``, ``<series>_epoch3``: one tag per epoch, x = position within the epoch.
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


def _surviving(
    steps: Sequence[int], values: Sequence[float]
) -> tuple[list[int], list[float], int, int, int]:
    """The series' surviving trajectory: kept steps and values, fresh restarts, resumes, and how
    many points later records replaced."""
    kept_s: list[int] = []
    kept_v: list[float] = []
    fresh = resumed = replaced = 0
    for s, v in zip(steps, values):
        if kept_s and s < kept_s[-1]:
            k = bisect.bisect_left(kept_s, s)  # kept steps never decrease
            if k <= max(1, int(FRESH_SHARE * len(kept_s))):
                fresh += 1
                k = 0  # a new run: nothing of the earlier one survives
            else:
                resumed += 1
            replaced += len(kept_s) - k
            del kept_s[k:], kept_v[k:]
        kept_s.append(s)
        kept_v.append(v)
    return kept_s, kept_v, fresh, resumed, replaced


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


def clean_series(
    raw: Mapping[str, Points], step_unit: str = "step"
) -> tuple[dict[str, Points], list[str]]:
    """``raw`` (series in the order the log holds their points) with every series one
    trajectory in step order, per-epoch tags left out; and one note per fix."""
    notes: list[str] = []
    dropped = _per_epoch_tags(list(raw), raw)
    if dropped:
        shown = ", ".join(dropped[:3]) + (" …" if len(dropped) > 3 else "")
        notes.append(
            f"{len(dropped)} per-epoch tag{'s' * (len(dropped) > 1)} left out ({shown}): "
            "their steps count batches within one epoch, not the run's steps"
        )
    out: dict[str, Points] = {}
    # (restarts, is a loss, points, replaced, name) of the series the note names
    worst: tuple[int, bool, int, int, str] | None = None
    runs = resumes = 0
    for name, (steps, values) in raw.items():
        if name in dropped:
            continue
        kept_s, kept_v, fresh, resumed, replaced = _surviving(steps, values)
        out[name] = (kept_s, kept_v)
        if fresh or resumed:
            runs, resumes = max(runs, fresh + 1), max(resumes, resumed)
            # the note names the series with most restarts, a loss first, then the longest
            key = (fresh + resumed, "loss" in name.lower(), len(kept_s), replaced, name)
            worst = key if worst is None or key[:3] > worst[:3] else worst
    if worst is not None:
        _, _, points, replaced, name = worst
        kept = out[name][0]
        span = f"{step_unit}s {kept[0]}–{kept[-1]}" if len(kept) else "no points"
        if runs > 1:
            notes.append(
                f"the log holds {runs} runs ({step_unit}s start over {runs - 1} "
                f"time{'s' * (runs > 2)}): the last is analysed ({name}: {points} points, {span}); "
                f"{replaced} points of earlier runs left out"
            )
        if resumes:
            notes.append(
                f"{step_unit}s go back {resumes} time{'s' * (resumes > 1)} (a run resumed from a "
                f"checkpoint): later records replace earlier ones from the {step_unit} they "
                f"restart at ({name}: {points} points kept, {span})"
            )
    return out, notes
