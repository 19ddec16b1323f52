"""Keras ``CSVLogger`` files -> RunData.

``keras.callbacks.CSVLogger`` writes one row per epoch, ``epoch`` first, then the sorted
keys (``loss``, ``val_loss``, ``learning_rate`` in Keras 3, ``lr`` in Keras 2); ``NA`` for a
missing value. The step of every series is the epoch number (0-based, as Keras writes it), so
``meta["step_unit"]`` is ``"epoch"``. Keras' training ``loss`` is the mean over the epoch.

A last line cut off by a killed run is skipped and noted in ``meta["notes"]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, to_float, to_step
from unstuck.analyze._csv import csv_rows
from unstuck.record.rundata import RunData

__all__ = ["read_keras"]


def read_keras(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read a Keras ``CSVLogger`` file: one row per epoch."""
    file = Path(path)
    header, rows, notes = csv_rows(file)
    if "epoch" not in header:
        raise LogFormatError(f"{file} has no 'epoch' column: not a Keras CSVLogger file")
    raw: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        epoch = to_step(row.get("epoch"))
        if epoch is None:
            continue
        for col, cell in row.items():
            value = to_float(cell)
            if col == "epoch" or value is None:
                continue
            steps, values = raw.setdefault(col, ([], []))
            steps.append(epoch)
            values.append(value)
    meta: dict[str, Any] = {"step_unit": "epoch", "file": str(file), "columns": header}
    meta["notes"] = ["Keras logs the training loss as the mean over each epoch", *notes]
    return build_run(os.fspath(path), "keras", raw, meta, run=run)
