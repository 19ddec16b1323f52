"""Any CSV of logged metrics -> RunData: a hand-written loop's ``csv.writer``, a pandas
``to_csv``, a W&B "Export CSV" of a chart.

One row per logged point, one column per metric; empty and ``NA`` cells are missing, so sparse
rows (validation every N steps) work. The x axis is the first step-like column
(``names.STEP_KEYS``: ``step``, ``global_step``, ``iteration``, W&B's ``Step`` ...), else
``epoch``, else the row's position (``_records.py``). pandas' unnamed index column is ignored.

**W&B exports** name their columns ``<run name> - <metric>``, with ``<metric>__MIN`` and
``<metric>__MAX`` for the smoothing band: the band columns are dropped and the run name is cut
off; an export holding several runs needs ``run`` (``--run``) to pick one.

**Long format**: a text column whose cells name the split of their row (``type``, ``split``,
``phase`` ... holding ``train``, ``val``, ``eval``, ``test``), with one ``loss`` column for all
rows: each row's metrics take its split as a prefix (``loss`` on a ``val`` row is ``val_loss``),
so the validation loss is never read as the training loss. A note says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, to_float
from unstuck.analyze._csv import csv_rows
from unstuck.analyze._records import series_from_records
from unstuck.analyze.names import SPLIT_PREFIXES, STEP_KEYS, name_key
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
    split_col: str | None = None
    splits: dict[str, None] = {}
    for row in rows:
        record = {}
        if split_col is None and not runs:
            split_col = _split_column(row)
        label = (row.get(split_col) or "") if split_col else ""
        split = SPLIT_PREFIXES.get(label.strip().lower())
        for col, cell in row.items():
            value = to_float(cell) if col in rename else None
            if value is None:
                continue
            name = rename[col]
            if split is not None and name_key(name) not in STEP_KEYS and not _split_named(name):
                splits[split] = None
                name = f"{split}_{name}"
            record[name] = value
        records.append(record)
    if split_col is not None and splits:
        notes.append(
            f"rows are split by the {split_col!r} column ({', '.join(splits)}): each row's "
            f"metrics carry its split (a 'loss' on a val row is 'val_loss')"
        )
    raw, unit, more = series_from_records(records)
    if not raw:
        raise LogFormatError(f"{file} has no numeric column besides its x axis")
    meta["step_unit"] = unit
    if notes or more:
        meta["notes"] = [*more, *notes]
    return build_run(os.fspath(path), "csv", raw, meta, run=None if runs else run)


def _split_column(row: dict[str, str]) -> str | None:
    """The column of this row whose text cell names a split (``train``, ``val`` ...), if any."""
    for col, cell in row.items():
        is_text = col and name_key(col) not in STEP_KEYS and to_float(cell) is None
        if is_text and (cell or "").strip().lower() in SPLIT_PREFIXES:
            return col
    return None


def _split_named(name: str) -> bool:
    """A metric whose name already says its split (``val_loss``, ``train/acc``)."""
    head = re.split(r"[/_\-. ]", name.strip().lower(), maxsplit=1)[0]
    return head in SPLIT_PREFIXES
