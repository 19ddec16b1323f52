"""Lightning ``metrics.csv`` -> RunData.

**Lightning** (``CSVLogger``): one header of sorted columns with ``epoch`` and ``step``; rows are
sparse (each ``log_metrics`` call writes only its own columns, the rest are empty). Each column
becomes a series over ``step`` from the rows where it has a value. A metric logged with
``on_step=True, on_epoch=True`` appears twice, ``<name>_step`` and ``<name>_epoch``: the
``_step`` column is the per-step series and takes the plain name (``train_loss_step`` ->
``train_loss`` -> ``loss``); the ``_epoch`` one keeps its name. ``lr-<Optimizer>`` columns
(``LearningRateMonitor``) become ``lr/<Optimizer>``. Validation rows are separate rows whose
``step`` is the global step when validation ran.

A last line cut off by a killed run is skipped and noted in ``meta["notes"]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, to_float
from unstuck.analyze._csv import csv_rows
from unstuck.analyze._records import series_from_records
from unstuck.record.rundata import RunData

__all__ = ["read_lightning"]


def read_lightning(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read a Lightning ``metrics.csv`` (or the ``version_N`` folder holding one)."""
    file = Path(path)
    if file.is_dir():
        file = file / "metrics.csv"
    header, rows, notes = csv_rows(file)
    if "step" not in header:
        raise LogFormatError(f"{file} has no 'step' column: not a Lightning metrics.csv")
    rename = {}
    for col in header:
        if col.endswith("_step") and col[: -len("_step")] + "_epoch" in header:
            rename[col] = col[: -len("_step")]
    records = []
    for row in rows:
        values = ((rename.get(col, col), to_float(cell)) for col, cell in row.items())
        records.append({name: value for name, value in values if value is not None})
    raw, _, skipped = series_from_records(records)  # the step column is the x axis
    notes += skipped
    meta: dict[str, Any] = {"step_unit": "step", "file": str(file), "columns": header}
    if notes:
        meta["notes"] = notes
    return build_run(os.fspath(path), "lightning", raw, meta, run=run)
