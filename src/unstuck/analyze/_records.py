"""Records -> raw series, for the readers whose rows are name -> number (CSV, JSON lines, text;
Lightning's metrics.csv too, whose x axis is its step column).

A record is one logged row: raw name -> number. Such logs say nothing about their x axis, so it
is found from the names (``names.STEP_KEYS``, ``names.EPOCH_KEYS``):

* a step: the first step name any record has; records without one are skipped (and counted);
* else an epoch, when no series has two points in one epoch (one row per epoch, as Keras or a
  hand-written epoch loop logs);
* else the record's position in the file, ``step_unit`` ``"record"``: HF's console dicts carry
  a fractional epoch, PyTorch's MNIST example logs several lines per epoch, a pandas CSV has
  only its row numbers. The detector needs an order and even spacing, not the step count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from unstuck.analyze._common import to_step
from unstuck.analyze.hygiene import continuous_steps
from unstuck.analyze.names import ALIASES, EPOCH_KEYS, STEP_KEYS, name_key

__all__ = ["RawSeries", "Record", "series_from_records"]

Record = Mapping[str, float]
RawSeries = dict[str, tuple[list[int], list[float]]]
LOSS_KEYS = frozenset(ALIASES["loss"]) | frozenset(ALIASES["val_loss"])


def _first_key(lower: Mapping[str, str], keys: Sequence[str]) -> str | None:
    return next((lower[k] for k in keys if k in lower), None)


def _one_point_per_epoch(records: Sequence[Record], epoch_key: str) -> bool:
    """Whether no series has two points in one epoch. Only the loss series count when the log
    has one (a profiler's or a model summary's numbers printed within an epoch do not make a
    per-epoch log per-batch), and an epoch met again after the epoch went back is a restarted
    run (``hygiene.py``), not a second point in it."""
    losses = {n for record in records for n in record if name_key(n) in LOSS_KEYS}
    last: dict[str, int] = {}
    for record in records:
        epoch = record.get(epoch_key)
        if epoch is None:
            continue
        if epoch != round(epoch):
            return False  # a fractional epoch (HF's console) numbers log points, not epochs
        for name in record:
            if name == epoch_key or (losses and name not in losses):
                continue
            if last.get(name) == round(epoch):
                return False
            last[name] = round(epoch)
    return True


def series_from_records(records: Sequence[Record]) -> tuple[RawSeries, str, list[str]]:
    """The raw series of ``records``, their ``step_unit`` and notes on what was assumed."""
    names = list(dict.fromkeys(name for record in records for name in record))
    lower = {name_key(n): n for n in reversed(names)}  # the first spelling of each wins
    step_key = _first_key(lower, STEP_KEYS)
    epoch_key = _first_key(lower, EPOCH_KEYS)
    notes: list[str] = []
    if step_key is not None:
        axis, unit = step_key, "step"
    elif epoch_key is not None and _one_point_per_epoch(records, epoch_key):
        axis, unit = epoch_key, "epoch"
    else:
        axis, unit = None, "record"
        why = "several points per epoch" if epoch_key is not None else "no step"
        notes.append(
            f"the log has {why}: its points are numbered in the order they were logged "
            "(x axis: records)"
        )
    xs: list[int | None] = [
        index if axis is None else to_step(record.get(axis)) for index, record in enumerate(records)
    ]
    if unit == "step" and epoch_key is not None:  # a step counter restarting every epoch
        xs, note = continuous_steps(xs, [record.get(epoch_key) for record in records])
        notes += [note] if note else []
    raw: RawSeries = {}
    epochs: dict[int, float] = {}
    skipped = 0
    for x, record in zip(xs, records):
        if x is None:
            skipped += any(name not in (step_key, epoch_key) for name in record)
            continue
        for name, value in record.items():
            if name == axis:
                continue
            if name == epoch_key and unit == "step":
                epochs.setdefault(x, value)  # every row of a step repeats it
                continue
            steps, values = raw.setdefault(name, ([], []))
            steps.append(x)
            values.append(value)
    if epochs and epoch_key is not None:
        raw[epoch_key] = (list(epochs), list(epochs.values()))
    if skipped:
        notes.append(f"{skipped} logged rows without a {axis!r} value were skipped")
    return raw, unit, notes
