"""JSON lines (one object per logged point) -> RunData: the ``json.dumps(metrics)`` a
hand-written loop appends to a file, W&B's ``wandb-history.jsonl``.

Every numeric value becomes a series; nested objects are flattened with ``/``
(``{"train": {"loss": 1}}`` -> ``train/loss``); keys starting with ``_`` (W&B's ``_runtime``,
``_timestamp``) are bookkeeping and dropped, except ``_step``. The x axis is found from the
names as for any generic log (``_records.py``). A last line cut off by a killed run is skipped
and noted; any other line that is not a JSON object is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, read_text, to_float
from unstuck.analyze._records import series_from_records
from unstuck.record.rundata import RunData

__all__ = ["looks_like_json_lines", "read_json_lines"]


def looks_like_json_lines(head: str) -> bool:
    """Whether the first two non-empty lines of ``head`` are each a whole JSON object (a
    pretty-printed JSON document, such as ``trainer_state.json``, opens with ``{`` alone)."""
    lines = [line for line in head.splitlines() if line.strip()][:2]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(line), dict) for line in lines)
    except (json.JSONDecodeError, RecursionError):
        return False


def _flatten(obj: Mapping[str, Any], prefix: str, out: dict[str, float]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, name + "/", out)
        elif not str(key).startswith("_") or key == "_step":
            number = to_float(value) if not isinstance(value, str) else None
            if number is not None:
                out[name] = number


def read_json_lines(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read a JSON-lines log: one JSON object per line."""
    file = Path(path)
    lines = read_text(file).splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise LogFormatError(f"{file} is empty")
    records: list[dict[str, float]] = []
    notes: list[str] = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(numbered) - 1 and k > 0:
                notes.append(f"the last line ({lineno}) is not whole JSON (cut off?): skipped")
                continue
            raise LogFormatError(f"{file}: line {lineno} is not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            raise LogFormatError(f"{file}: line {lineno} is a JSON {kind}, not an object")
        record: dict[str, float] = {}
        _flatten(obj, "", record)
        records.append(record)
    raw, unit, more = series_from_records(records)
    if not raw:
        raise LogFormatError(f"{file} has no numeric value besides its x axis")
    meta: dict[str, Any] = {"file": str(file), "step_unit": unit}
    if notes or more:
        meta["notes"] = [*more, *notes]
    return build_run(os.fspath(path), "jsonl", raw, meta, run=run)
