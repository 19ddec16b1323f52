"""Fuzz every ``unstuck analyze`` reader (issue 21): random bytes and random structured rows end
in a RunData or a one-line ``LogFormatError``, never another exception, within a time bound.

The normal suite runs ``EXAMPLES`` inputs per reader and input kind; ``bench/fuzz_readers.py``
runs the same generators over 10,000+ inputs and prints the counts.
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unstuck.analyze import LogFormatError, load
from unstuck.record.store import _SCHEMA, SCHEMA_VERSION, STORE_FILENAME

EXAMPLES = 50  # inputs per reader and kind in the normal suite (the bench runs thousands)
DEADLINE_MS = 5_000  # one input read within this, on a loaded 2-core CI machine
TIME_BOUND_S = DEADLINE_MS / 1000

# Each reader, and the file name its input gets (``None``: detection picks the reader).
READERS: dict[str, str] = {
    "csv": "log.csv",
    "lightning": "metrics.csv",
    "keras": "history.csv",
    "jsonl": "log.jsonl",
    "hf": "trainer_state.json",
    "text": "train.log",
    "tensorboard": "events.out.tfevents.1.host",
    "unstuck": STORE_FILENAME,
    "mlflow": "mlflow.db",
}
FORMATS: list[str | None] = [*READERS, None]

NAMES = st.sampled_from(
    ["step", "epoch", "loss", "val_loss", "train_loss", "lr", "global_step", "acc", "x", ""]
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1e30, 1e300, -1e300, 2**63, 0, -1]),
)
CELLS = st.one_of(NUMBERS, st.text(max_size=8), st.none())
ROWS = st.lists(st.dictionaries(NAMES, CELLS, max_size=5), max_size=40)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _json_cell(value: Any) -> Any:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def write_rows(folder: pathlib.Path, fmt: str | None, rows: list[dict[str, Any]]) -> pathlib.Path:
    """``rows`` written the way ``fmt``'s logs are (CSV, JSON lines, HF state, printout, a
    store or MLflow-like SQLite file, a TensorBoard event file of raw records)."""
    name = READERS.get(fmt or "csv", "log.csv")
    path = folder / name
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["step"]
    if fmt in (None, "csv", "lightning", "keras"):
        lines = [",".join(columns)] + [",".join(_cell(r.get(c)) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text(
            "".join(json.dumps({k: _json_cell(v) for k, v in r.items()}) + "\n" for r in rows)
        )
    elif fmt == "hf":
        history = [{k: _json_cell(v) for k, v in r.items()} for r in rows]
        path.write_text(json.dumps({"log_history": history, "global_step": len(rows)}))
    elif fmt == "text":
        path.write_text(
            "".join(" ".join(f"{k} {_cell(v)}:" for k, v in r.items()) + "\n" for r in rows)
        )
    elif fmt == "tensorboard":
        path.write_bytes(_tensorboard_events(rows))
    elif fmt == "unstuck":
        conn = sqlite3.connect(path)
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO schema_info VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        conn.execute("INSERT INTO runs (run_id, started_at, meta) VALUES ('r', 0, '{}')")
        for i, r in enumerate(rows):
            step = r.get("step")
            if step is None or (isinstance(step, float) and math.isnan(step)):
                step = i  # NOT NULL in the schema, and SQLite stores NaN as NULL
            step = _sql(step)
            for name_, value in r.items():
                conn.execute("INSERT INTO metrics VALUES (1, ?, ?, ?)", (name_, step, _sql(value)))
            conn.execute(
                "INSERT INTO events VALUES (1, ?, 'state', ?, 0, ?)",
                (i, step, json.dumps(r, default=str)),
            )
        conn.commit()
        conn.close()
    else:  # mlflow: the tables detection looks for, filled with the rows
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE experiments (experiment_id, name)")
        conn.execute("CREATE TABLE alembic_version (version_num)")
        conn.executemany(
            "INSERT INTO experiments VALUES (?, ?)", [(_sql(r.get("step")), str(r)) for r in rows]
        )
        conn.commit()
        conn.close()
    return path


def _tensorboard_events(rows: list[dict[str, Any]]) -> bytes:
    """Real, CRC-framed TensorBoard scalar events (tag = column, step = the row's ``step``),
    so the fuzz reaches the scalar parsing and not only the framing checks."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString())
    for i, row in enumerate(rows):
        step = row.get("step")
        step = step if isinstance(step, int) and -(2**63) <= step < 2**63 else i
        values = [
            summary_pb2.Summary.Value(tag=str(tag), simple_value=float(value))
            for tag, value in row.items()
            if tag != "step" and isinstance(value, float | int) and abs(value) < 1e300
        ]
        event = event_pb2.Event(
            step=step, wall_time=float(i), summary=summary_pb2.Summary(value=values)
        )
        writer.write(event.SerializeToString())
    return buffer.getvalue()


def _sql(value: Any) -> Any:
    """A cell SQLite can bind (its integers are 64-bit)."""
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)
    return value


def write_bytes(folder: pathlib.Path, fmt: str | None, data: bytes) -> pathlib.Path:
    path = folder / READERS.get(fmt or "csv", "log.csv")
    path.write_bytes(data)
    return path


def outcome(path: pathlib.Path, fmt: str | None) -> str:
    """``"result"`` or ``"error"`` (a one-line LogFormatError); anything else propagates."""
    try:
        load(path, fmt=fmt)
    except LogFormatError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"a multi-line error: {exc}") from None
        return "error"
    return "result"


def check(fmt: str | None, make: Callable[[pathlib.Path], pathlib.Path]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = make(pathlib.Path(tmp))
        start = time.monotonic()
        result = outcome(path, fmt)
        assert time.monotonic() - start < TIME_BOUND_S
        return result


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE_MS,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_raise(fmt: str | None, data: bytes) -> None:
    check(fmt, lambda folder: write_bytes(folder, fmt, data))


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(rows=ROWS)
def test_random_rows_never_raise(fmt: str | None, rows: list[dict[str, Any]]) -> None:
    check(fmt, lambda folder: write_rows(folder, fmt, rows))
