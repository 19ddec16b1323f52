"""Which reader a path needs (``detect_format``), and reading it (``load``).

Recognition, in this order (docs/analyze.md has the table):

* ``mlflow:RUN_ID`` -> ``mlflow``;
* a folder holding ``unstuck.sqlite`` -> ``unstuck``; ``trainer_state.json`` (or
  ``checkpoint-N/trainer_state.json``) -> ``hf``; ``metrics.csv`` (or a single
  ``version_N/metrics.csv``) -> ``lightning``; any ``events.out.tfevents.*`` below ->
  ``tensorboard``;
* a file named ``events.out.tfevents.*`` -> ``tensorboard``; a SQLite file -> ``unstuck`` (it has
  the run store's ``schema_info`` table) or ``mlflow`` (``experiments`` and ``alembic_version``);
  JSON lines (``.jsonl``, or two whole JSON objects on the first two lines) -> ``jsonl``; JSON
  (``.json`` or a first character ``{``) -> ``hf``; a CSV whose header has ``step`` and
  ``epoch`` -> ``lightning``; one with ``epoch`` and no step-like column (``names.STEP_KEYS``)
  -> ``keras``; one with a step-like column, a loss column or W&B's ``<run> - <metric>``
  columns -> ``csv``; else text with at least three lines naming a loss
  (``step 100: loss 0.41``) -> ``text``.

Anything else, and any file its reader cannot parse, is a :class:`LogFormatError` whose one-line
message says why and lists the formats and how to pass each. So is anything past the limits of
``_limits.py`` (a pipe or device, a text log too large or with too long a line, JSON nested too
deeply, a TensorBoard record too large).
"""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path

from unstuck.analyze import _limits
from unstuck.analyze._common import FORMATS, KNOWN_FORMATS, LogFormatError, check_regular
from unstuck.analyze._csv import csv_header
from unstuck.analyze.hf_trainer import find_state_file, read_hf
from unstuck.analyze.json_lines import looks_like_json_lines, read_json_lines
from unstuck.analyze.keras_csv import read_keras
from unstuck.analyze.lightning_csv import read_lightning
from unstuck.analyze.mlflow_run import MLFLOW_PREFIX, read_mlflow, read_mlflow_file
from unstuck.analyze.names import ALIASES, STEP_KEYS, name_key, use_series
from unstuck.analyze.run_store import read_store
from unstuck.analyze.table_csv import read_csv_log, wandb_runs
from unstuck.analyze.tensorboard_events import EVENT_PREFIX, event_dirs, read_tensorboard
from unstuck.analyze.text_log import looks_like_text_log, read_text_log
from unstuck.record.rundata import RunData
from unstuck.record.store import STORE_FILENAME

__all__ = ["detect_format", "load"]

SQLITE_MAGIC = b"SQLite format 3\x00"
HEAD_BYTES = 4096
MAX_REASON = 200  # characters of a reader's own reason kept in the one-line error


def _fail(
    path: object, why: str, fmt: str | None = None, *, unknown: bool = False
) -> LogFormatError:
    """One line: what could not be read and why; the formats unstuck reads only when the
    trouble is that the format is unknown (a missing file needs the path, not the list)."""
    what = f"{path} as {fmt}" if fmt else f"{path}"
    why = " ".join(why.splitlines())  # the CLI prints one line
    if len(why) > MAX_REASON:
        why = why[: MAX_REASON - 1] + "…"
    suffix = f"; {KNOWN_FORMATS}" if unknown else ""
    return LogFormatError(f"cannot read {what}: {why}{suffix}")


def _sqlite_tables(path: Path) -> set[str]:
    """The plain tables of a SQLite file, read without creating or changing anything beside it
    (``immutable=1``: no ``-wal``/``-shm`` made, no journal recovered)."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return set()
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError:
        return set()
    finally:
        conn.close()
    return {str(r[0]) for r in rows}


def _detect_dir(path: Path) -> str:
    if (path / STORE_FILENAME).is_file():
        return "unstuck"
    if find_state_file(path) is not None:
        return "hf"
    if (path / "metrics.csv").is_file():
        return "lightning"
    versions = sorted(path.glob("version_*/metrics.csv"))
    if len(versions) == 1:
        return "lightning"
    if len(versions) > 1:
        listed = ", ".join(v.parent.name for v in versions)
        raise LogFormatError(
            f"{len(versions)} Lightning runs in {path}: {listed}; pass one version_N folder"
        )
    if event_dirs(path):
        return "tensorboard"
    raise _fail(path, "a folder with no log in it that unstuck knows", unknown=True)


def _detect_file(path: Path) -> str:
    if path.name.startswith(EVENT_PREFIX):
        return "tensorboard"
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None
    if head.startswith(SQLITE_MAGIC):
        tables = _sqlite_tables(path)
        if {"schema_info", "runs", "metrics", "events"} <= tables:
            return "unstuck"
        if {"experiments", "alembic_version"} <= tables:
            return "mlflow"
        raise _fail(
            path, "a SQLite file that is neither an unstuck run store nor MLflow's", unknown=True
        )
    size = path.stat().st_size
    if size > _limits.MAX_FILE_BYTES:
        raise _fail(
            path,
            f"{size / 2**20:g} MiB, over the {_limits.MAX_FILE_BYTES / 2**20:g} MiB a text log "
            "may be; pass a shorter log (e.g. its last lines: tail -n 1000000)",
        )
    if not head.strip():
        raise _fail(path, "the file is empty")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4 KiB boundary
            raise _fail(path, "a binary file", unknown=True) from None
        text = head[: exc.start].decode("utf-8")
    if path.suffix.lower() == ".jsonl" or looks_like_json_lines(text):
        return "jsonl"
    first = text.lstrip().split("\n", 1)[0].strip()
    if path.suffix.lower() == ".json" or first == "{" or first.startswith('{"'):
        return "hf"  # a JSON document (a printed Python dict, {'loss': ..}, is a console log)
    raw_header = csv_header(path)
    header = {name_key(h) for h in raw_header}
    if "step" in header and "epoch" in header:
        return "lightning"
    if "epoch" in header and not header & set(STEP_KEYS):
        return "keras"
    losses = {*ALIASES["loss"], *ALIASES["val_loss"]}
    if len(raw_header) > 1 and (header & {*STEP_KEYS, *losses} or wandb_runs(raw_header)):
        return "csv"
    if looks_like_text_log(path):
        return "text"
    raise _fail(
        path,
        "a text file that is no known log (no CSV header with a step, epoch or loss column, "
        "nor printed loss lines)",
        unknown=True,
    )


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path``: one of ``FORMATS``, or a :class:`LogFormatError`.

    >>> detect_format("lightning_logs/version_0/metrics.csv")  # doctest: +SKIP
    'lightning'
    """
    text = os.fspath(path)
    if text.startswith(MLFLOW_PREFIX):
        return "mlflow"
    p = Path(text)
    if not p.exists():
        raise _fail(text, "no such file or folder")
    try:
        check_regular(p)
    except LogFormatError as exc:
        raise _fail(text, str(exc).removeprefix(f"{text} ")) from None
    return _detect_dir(p) if p.is_dir() else _detect_file(p)


def load(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    run: str | None = None,
    tracking_uri: str | None = None,
    loss: str | None = None,
    val_loss: str | None = None,
) -> RunData:
    """Read ``path`` into a :class:`RunData` with canonical series names (``names.py``).

    ``fmt`` forces a reader (default: :func:`detect_format`); ``run`` picks a run in a source
    holding several (a TensorBoard sub-folder, a run store's run_id, an MLflow run id, a W&B
    export's run name; in a file of runs one after another, the run's number, 1 = the first);
    ``tracking_uri`` is MLflow's, for ``mlflow:RUN_ID``; ``loss`` / ``val_loss`` name the series
    to analyse as the training / validation loss when the name table does not know them.
    """
    text = os.fspath(path)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    fmt = fmt or detect_format(text)
    try:
        if not text.startswith(MLFLOW_PREFIX) and os.path.lexists(text):
            check_regular(text)  # also when --format skipped detection: a FIFO blocks for ever
        data = _read(text, fmt, run, tracking_uri)
    except LogFormatError as exc:
        if str(exc).startswith("cannot read "):
            raise
        raise _fail(text, str(exc), fmt) from None
    except RecursionError:
        why = "JSON nested deeper than Python parses (about 1000 levels)"
        raise _fail(text, why, fmt) from None
    except MemoryError:
        raise _fail(text, "it does not fit in memory; pass a shorter log", fmt) from None
    except (OSError, ValueError, OverflowError, sqlite3.Error, csv.Error) as exc:
        raise _fail(text, f"{type(exc).__name__}: {exc}", fmt) from None
    for canonical, name in (("loss", loss), ("val_loss", val_loss)):
        if name is not None:
            try:
                use_series(data, canonical, name)
            except ValueError as exc:
                raise LogFormatError(f"--{canonical.replace('_', '-')}: {exc}") from None
    return data


def _read(text: str, fmt: str, run: str | None, tracking_uri: str | None) -> RunData:
    if fmt == "mlflow":
        if text.startswith(MLFLOW_PREFIX):
            run_id = text[len(MLFLOW_PREFIX) :] or run
            return read_mlflow(run_id, tracking_uri, source=text)
        if tracking_uri:
            return read_mlflow(run, tracking_uri, source=text)
        return read_mlflow_file(text, run, source=text)
    if fmt == "unstuck":
        return read_store(text, run)
    if fmt == "tensorboard":
        return read_tensorboard(text, run)
    if fmt == "hf":
        return read_hf(text, run)
    if fmt == "lightning":
        p = Path(text)
        if p.is_dir() and not (p / "metrics.csv").is_file():
            versions = sorted(p.glob("version_*/metrics.csv"))
            if len(versions) == 1:
                return read_lightning(versions[0], run)
        return read_lightning(text, run)
    if fmt == "keras":
        return read_keras(text, run)
    if fmt == "csv":
        return read_csv_log(text, run)
    if fmt == "jsonl":
        return read_json_lines(text, run)
    if fmt == "text":
        return read_text_log(text, run)
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
