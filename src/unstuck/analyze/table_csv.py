"""Any CSV of logged metrics -> RunData: a hand-written loop's ``csv.writer``, a pandas
``to_csv``, a W&B "Export CSV" of a chart.

One row per logged point, one column per metric; empty and ``NA`` cells are missing, so sparse
rows (validation every N steps) work. The x axis is the first step-like column
(``names.STEP_KEYS``: ``step``, ``global_step``, ``iteration``, W&B's ``Step`` ...), else
``epoch``, else the row's position (``_records.py``). pandas' unnamed index column is ignored.

**W&B exports** name their columns ``<run name> - <metric>``, with ``<metric>__MIN`` and
``<metric>__MAX`` for the smoothing band: the band columns are dropped and the run name is cut
off; an export holding several runs needs ``run`` (``--run``) to pick one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, to_float
from unstuck.analyze._csv import csv_rows
from unstuck.analyze._records import series_from_records
from unstuck.analyze.names import STEP_KEYS, name_key
from unstuck.record.rundata import RunData

__all__ = ["read_csv_log", "wandb_runs"]

WANDB_COLUMN = re.compile(r"^(?P<run>.+?) - (?P<metric>.+)$")
WANDB_BAND = ("__MIN", "__MAX")
PANDAS_INDEX = re.compile(r"^(|Unnamed: 0)$")


def wandb_runs(header: list[str]) -> list[str]:
    """The run names of a W&B export header, in column order (empty: not a W&B export)."""
    metrics = [h for h in header if name_key(h) not in STEP_KEYS and not PANDAS_INDEX.match(h)]
    matches = [WANDB_COLUMN.match(h) for h in metrics]
    if not metrics or not all(matches):
        return []
    return list(dict.fromkeys(m.group("run") for m in matches if m is not None))


def read_csv_log(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read a CSV of logged metrics; ``run`` picks one run of a W&B export holding several."""
    file = Path(path)
    header, rows, notes = csv_rows(file)
    runs = wandb_runs(header)
    rename: dict[str, str] = {}
    meta: dict[str, Any] = {"file": str(file), "columns": header}
    if runs:
        if run is None and len(runs) > 1:
            raise LogFormatError(
                f"{len(runs)} W&B runs in {file}: {', '.join(runs)}; pass one with --run"
            )
        chosen = run if run is not None else runs[0]
        if chosen not in runs:
            raise LogFormatError(f"no run {chosen!r} in {file}; its runs: {', '.join(runs)}")
        prefix = f"{chosen} - "
        for col in header:
            if col.startswith(prefix) and not col.endswith(WANDB_BAND):
                rename[col] = col[len(prefix) :]
            elif name_key(col) in STEP_KEYS:
                rename[col] = col
        meta["run"] = chosen
    else:  # a --run here numbers the runs the file holds one after another (hygiene.py)
        rename = {col: col for col in header if not PANDAS_INDEX.match(col)}
    records = []
    for row in rows:
        record = {}
        for col, cell in row.items():
            value = to_float(cell) if col in rename else None
            if value is not None:
                record[rename[col]] = value
        records.append(record)
    raw, unit, more = series_from_records(records)
    if not raw:
        raise LogFormatError(f"{file} has no numeric column besides its x axis")
    meta["step_unit"] = unit
    if notes or more:
        meta["notes"] = [*more, *notes]
    return build_run(os.fspath(path), "csv", raw, meta, run=None if runs else run)
