"""The run store: one SQLite file per ``run_dir`` that holds what a guarded run saw and did.

Writes are batched off the hot path: ``log_metrics`` / ``log_event`` / ``update_meta`` only
append to an in-memory buffer (no I/O). ``flush()`` hands the buffer, as one batch, to a
background writer thread that commits it in one transaction. ``flush(wait=True)`` (the default)
returns once that commit is done; ``flush(wait=False)`` returns at once, so a training loop never
waits on the disk. The SQLite file is in WAL mode with ``synchronous=NORMAL``: a commit survives
the process being killed (even with SIGKILL); only an OS crash or power loss can lose the last
few commits. The schema is documented in ``docs/run-store.md``.

Example::

    with RunStore("runs/exp1", meta={"lr": 3e-4}) as store:
        store.log_metrics([("loss", 0, 2.31), ("loss", 1, 2.29)])
        store.log_event("state", 1, {"state": "improving"})
        store.flush()
    read_metrics("runs/exp1")["loss"]  # ([0, 1], [2.31, 2.29])
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import queue
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "RunStore",
    "read_events",
    "read_meta",
    "read_metrics",
    "read_runs",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: int = 1  # bump on any change to the tables below; readers refuse newer files
STORE_FILENAME = "unstuck.sqlite"
BUSY_TIMEOUT_S = 30.0  # several processes may share one file; wait this long for its lock
FLOAT_TAG = "$float"  # JSON payloads encode NaN / ±inf as {"$float": "nan" | "inf" | "-inf"}
STATUS_RUNNING = "running"  # also what a killed run is left as
STATUS_CLOSED = "closed"
CLOSED_MESSAGE = "RunStore is closed; create a new Guard/RunStore to keep recording"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL UNIQUE,
    started_at REAL NOT NULL,
    ended_at   REAL,
    status     TEXT NOT NULL DEFAULT '{STATUS_RUNNING}',
    meta       TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS metrics (
    run   INTEGER NOT NULL REFERENCES runs(id),
    name  TEXT NOT NULL,
    step  INTEGER NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_run_name_step ON metrics(run, name, step);
CREATE TABLE IF NOT EXISTS events (
    run     INTEGER NOT NULL REFERENCES runs(id),
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    step    INTEGER NOT NULL,
    time    REAL NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE INDEX IF NOT EXISTS events_run_kind ON events(run, kind);
"""


# --------------------------------------------------------------------------- encoding


def _encode_json(value: Any, where: str) -> str:
    """Strict JSON (queryable by SQLite's json functions) with non-finite floats tagged."""
    try:
        return json.dumps(_tag_floats(value), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{where} is not JSON-serialisable ({exc}); pass primitives "
            "(str, int, float, bool, None) in lists and dicts with str keys"
        ) from None


def _tag_floats(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {FLOAT_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, Mapping):
        return {k: _tag_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tag_floats(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars, 0-d tensors
    if callable(item):
        return _tag_floats(item())
    return value  # json.dumps names the offending type


def _untag_floats(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and FLOAT_TAG in obj:
        return float(obj[FLOAT_TAG])
    return obj


def _decode_json(text: str) -> Any:
    return json.loads(text, object_hook=_untag_floats)


def _to_real(value: float) -> float | None:
    return None if math.isnan(value) else value  # SQLite turns NaN into NULL anyway; be explicit


def _from_real(value: float | None) -> float:
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------- writer


@dataclass
class _Batch:
    metrics: list[tuple[str, int, float]] = field(default_factory=list)
    events: list[tuple[int, str, int, float, str]] = field(default_factory=list)
    meta: str | None = None  # the whole meta object, when it changed
    end: bool = False  # mark the run closed in this transaction

    def __bool__(self) -> bool:
        return bool(self.metrics or self.events or self.meta is not None or self.end)


class _Writer:
    """Buffer + background writer thread; kept apart from RunStore so a finalizer can close it."""

    def __init__(self, conn: sqlite3.Connection, run_pk: int, path: pathlib.Path) -> None:
        self.conn = conn
        self.run_pk = run_pk
        self.path = path
        self.closed = False
        self._pid = os.getpid()
        # Guards the buffer. Reentrant: a SIGTERM handler closing the Guard runs in the thread
        # it interrupted, which may be inside a ``with self._lock`` block.
        self._lock = threading.RLock()
        self._buffer = _Batch()
        self._next_seq = 0
        self._queue: queue.SimpleQueue[tuple[int, _Batch] | None] = queue.SimpleQueue()
        self._done = threading.Condition()
        self._submitted = 0
        self._committed = 0
        self._error: BaseException | None = None
        self.failed_batches = 0  # batches the writer could not commit (dropped, never retried)
        self._thread = threading.Thread(
            target=self._run, name=f"unstuck-run-store-{path.parent.name}", daemon=True
        )
        self._thread.start()

    # hot path ------------------------------------------------------------------------
    def add_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError(CLOSED_MESSAGE)
            self._buffer.metrics.extend(rows)

    def add_event(self, kind: str, step: int, payload: str) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError(CLOSED_MESSAGE)
            self._buffer.events.append((self._next_seq, kind, step, time.time(), payload))
            self._next_seq += 1

    def set_meta(self, meta: str) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError(CLOSED_MESSAGE)
            self._buffer.meta = meta

    # handing over --------------------------------------------------------------------
    def flush(self, wait: bool, end: bool = False) -> None:
        """Hand the buffer to the writer; ``wait`` (or ``end``) waits for the commit and raises
        a failed earlier commit. ``wait=False`` never raises: a training loop's automatic flush
        must not stop training because the disk filled up."""
        if os.getpid() != self._pid:
            return  # a forked child (a DataLoader worker) has no writer thread: never wait on it
        with self._lock:
            if self.closed:
                return
            batch, self._buffer = self._buffer, _Batch()
            batch.end = end
            if end:
                self.closed = True
            if batch:
                self._submitted += 1
                self._queue.put((self._submitted, batch))
            ticket = self._submitted  # waiting covers earlier wait=False batches too
            if end:
                self._queue.put(None)
        if wait or end:
            with self._done:
                self._done.wait_for(lambda: self._committed >= ticket)
        if end:
            self._thread.join()
        if wait or end:
            self._raise_pending()

    def close_quietly(self) -> None:
        """Finalizer / interpreter-exit path: flush what is buffered, never raise."""
        try:
            self.flush(wait=True, end=True)
        except Exception:
            logger.exception("unstuck run store %s: final flush failed", self.path)

    def _raise_pending(self) -> None:
        with self._done:
            error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(
                f"run store {self.path} could not commit a batch ({error}); "
                "check free disk space and that run_dir is still writable"
            ) from error

    # writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                ticket, batch = item
                try:
                    self._commit(batch)
                except Exception as exc:
                    # Said once per store: a full disk fails every later commit too.
                    log = logger.warning if not self.failed_batches else logger.debug
                    log(
                        "unstuck: run store %s could not commit (%s); training goes on and "
                        "records are dropped until a commit succeeds: free disk space under "
                        "run_dir or check it is still writable",
                        self.path,
                        exc,
                    )
                    with self._done:
                        self._error = exc
                        self.failed_batches += 1
                with self._done:
                    self._committed = ticket
                    self._done.notify_all()
        finally:
            self.conn.close()

    def _commit(self, batch: _Batch) -> None:
        run = self.run_pk
        with self.conn:  # one transaction: all of the batch or none of it
            if batch.metrics:
                self.conn.executemany(
                    "INSERT INTO metrics (run, name, step, value) VALUES (?, ?, ?, ?)",
                    [(run, n, s, _to_real(v)) for n, s, v in batch.metrics],
                )
            if batch.events:
                self.conn.executemany(
                    "INSERT INTO events (run, seq, kind, step, time, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(run, *ev) for ev in batch.events],
                )
            if batch.meta is not None:
                self.conn.execute("UPDATE runs SET meta = ? WHERE id = ?", (batch.meta, run))
            if batch.end:
                self.conn.execute(
                    "UPDATE runs SET status = ?, ended_at = ? WHERE id = ?",
                    (STATUS_CLOSED, time.time(), run),
                )


# --------------------------------------------------------------------------- store


def _default_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _open_for_writing(path: pathlib.Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. some network filesystems
            logger.warning("run store %s: WAL unavailable, journal_mode=%s", path, mode)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM schema_info WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO schema_info (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise ValueError(
                    f"run store {path} has schema version {row[0]}, newer than this "
                    f"unstuck's {SCHEMA_VERSION}; upgrade unstuck or use a new run_dir"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    conn.isolation_level = "DEFERRED"  # the writer's `with conn:` opens and commits transactions
    return conn


class RunStore:
    """Records one run (metadata, metric series, events) into ``run_dir/unstuck.sqlite``.

    Several runs may share one file: opening an existing store appends a new row to ``runs``.
    ``log_*`` never touch the disk; ``flush()`` commits everything buffered so far in one
    transaction on a background thread. What a completed ``flush()`` committed survives SIGKILL.

    >>> with RunStore(tmp_path) as store:  # doctest: +SKIP
    ...     store.log_metrics([("loss", 0, 1.5)])
    """

    run_id: str
    path: pathlib.Path

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        meta: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        run_dir = pathlib.Path(run_dir)
        self.path = run_dir / STORE_FILENAME
        self.run_id = _default_run_id() if run_id is None else str(run_id)
        self._meta: dict[str, Any] = dict(meta or {})
        meta_json = _encode_json(self._meta, "meta")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            conn = _open_for_writing(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise ValueError(
                f"run_dir '{run_dir}' is not writable: {exc}; "
                "pass a writable directory or run_dir=None"
            ) from exc
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO runs (run_id, started_at, status, meta) VALUES (?, ?, ?, ?)",
                    (self.run_id, time.time(), STATUS_RUNNING, meta_json),
                )
        except sqlite3.IntegrityError:
            conn.close()
            raise ValueError(
                f"run_id '{self.run_id}' is already in {self.path}; "
                "pass a new run_id or run_id=None"
            ) from None
        except sqlite3.Error as exc:
            conn.close()
            raise ValueError(
                f"run_dir '{run_dir}' is not writable: {exc}; "
                "pass a writable directory or run_dir=None"
            ) from exc
        self._writer = _Writer(conn, int(cur.lastrowid or 0), self.path)
        # Flush what is buffered if the store is dropped or the interpreter exits unclosed.
        self._finalizer = weakref.finalize(self, self._writer.close_quietly)
        logger.debug("run store %s: recording run %s", self.path, self.run_id)

    @property
    def failed_batches(self) -> int:
        """Batches the writer could not commit (disk full, directory removed): dropped."""
        return self._writer.failed_batches

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran; every ``log_*`` then raises."""
        return self._writer.closed

    def log_metrics(self, rows: Iterable[tuple[str, int, float]]) -> None:
        """Buffer ``(series name, step, value)`` rows; NaN and ±inf are kept as such."""
        if self._writer.closed:
            raise RuntimeError(CLOSED_MESSAGE)
        self._writer.add_metrics([(str(n), int(s), float(v)) for n, s, v in rows])

    def log_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        """Buffer one event (``state``, ``plateau``, ``finding``, ``action``, ...).

        The payload is encoded now, so a payload that is not JSON fails here, at the caller.
        """
        if self._writer.closed:
            raise RuntimeError(CLOSED_MESSAGE)
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"event kind must be a non-empty str, got {kind!r}")
        if not isinstance(payload, Mapping):
            raise TypeError(f"event payload must be a mapping, got {type(payload).__name__}")
        self._writer.add_event(kind, int(step), _encode_json(payload, f"payload of {kind!r}"))

    def update_meta(self, **meta: Any) -> None:
        """Merge keys into the run's metadata (written at the next flush)."""
        if self._writer.closed:
            raise RuntimeError(CLOSED_MESSAGE)
        merged = {**self._meta, **meta}
        encoded = _encode_json(merged, "meta")
        self._meta = merged
        self._writer.set_meta(encoded)

    def flush(self, wait: bool = True) -> None:
        """Commit everything buffered so far in one transaction, on the writer thread.

        ``wait=True`` returns once it is committed (then it survives SIGKILL) and raises if an
        earlier commit failed; ``wait=False`` only hands the batch over and never raises. No-op
        once closed.
        """
        self._writer.flush(wait=wait)

    def close(self) -> None:
        """Flush, mark the run closed, stop the writer thread. Idempotent."""
        if self._finalizer.detach() is not None:
            self._writer.flush(wait=True, end=True)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"RunStore({str(self.path)!r}, run_id={self.run_id!r}, {state})"


# --------------------------------------------------------------------------- read side


def _store_file(path: str | os.PathLike[str]) -> pathlib.Path:
    p = pathlib.Path(path)
    return p / STORE_FILENAME if p.is_dir() else p


# The tables a run store is made of; each must be a plain table (a view, even a recursive one,
# is a hostile or foreign file, and querying it could run for ever and fill the temp disk).
_STORE_TABLES = ("schema_info", "runs", "metrics", "events")
PROGRESS_OPS = 10_000  # SQLite VM steps between two checks of the query deadline


def _query_seconds() -> float:
    """The query deadline, from ``unstuck.analyze._limits`` (one place for every reader's
    limits; imported here, not at the top, so the writer never loads the analysis)."""
    from unstuck.analyze import _limits

    return _limits.QUERY_SECONDS


def _open_read_only(file: pathlib.Path) -> sqlite3.Connection:
    """A connection that cannot change the file or the files beside it.

    With no ``-wal`` beside the file there is nothing to recover and ``immutable=1`` reads it
    without creating ``-wal``/``-shm`` (``mode=ro`` alone would create both, and a read-write
    connection checkpoints and deletes a killed run's WAL on close). With a ``-wal`` (a live or
    killed writer), ``mode=ro`` reads the committed rows in it; where even that cannot open (a
    read-only mount with no ``-shm``), ``immutable=1`` reads the main file as it is.
    """
    uri = file.resolve().as_uri()
    wal = file.with_name(file.name + "-wal")
    if wal.exists():
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL
            return conn
        except sqlite3.OperationalError:
            if conn is not None:  # the WAL index cannot be opened or created here
                conn.close()
            # read the main file alone
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=BUSY_TIMEOUT_S)


def _check_schema(conn: sqlite3.Connection, file: pathlib.Path) -> None:
    """Refuse a file whose store tables are missing or are not plain tables, before any query
    touches them (reading ``sqlite_master`` runs no user SQL)."""
    rows = conn.execute(
        "SELECT name, type, sql FROM sqlite_master WHERE name IN (?, ?, ?, ?)", _STORE_TABLES
    ).fetchall()
    kinds = {str(name): (str(kind), str(sql or "")) for name, kind, sql in rows}
    for table in _STORE_TABLES:
        kind, sql = kinds.get(table, ("missing", ""))
        if kind != "table" or sql.upper().startswith("CREATE VIRTUAL"):
            what = "missing" if kind == "missing" else f"a {kind}, not a table"
            raise ValueError(
                f"{file} is not an unstuck run store (its {table!r} is {what}); pass the "
                f"run_dir a Guard wrote or its {STORE_FILENAME}"
            )


def _connect_read(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open for reading without creating or changing anything; works while a writer is live
    and after one was killed. Every query on it stops after ``QUERY_SECONDS``."""
    file = _store_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no run store at {file}; pass a run_dir or its {STORE_FILENAME}")
    seconds = _query_seconds()
    try:
        conn = _open_read_only(file)
    except sqlite3.Error as exc:
        raise ValueError(f"{file} cannot be opened as a run store ({exc})") from None
    deadline = time.monotonic() + seconds
    conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_OPS)
    try:
        _check_schema(conn, file)
        row = conn.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ValueError(f"{file} is not an unstuck run store ({exc})") from None
    except ValueError:
        conn.close()
        raise
    try:
        version = None if row is None else int(row[0])
    except (TypeError, ValueError):
        version = None
    if version is None or version > SCHEMA_VERSION:
        conn.close()
        raise ValueError(
            f"{file} has schema version {None if row is None else row[0]}; this unstuck reads "
            f"up to {SCHEMA_VERSION}: upgrade unstuck"
        )
    return conn


def _query(conn: sqlite3.Connection, file: object, sql: str, params: Any = ()) -> list[Any]:
    """All rows of one query, or a one-line ValueError (a corrupt file, or the deadline)."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        seconds = _query_seconds()
        why = f"reading it took over {seconds:g} s" if "interrupt" in str(exc) else str(exc)
        raise ValueError(f"{file} cannot be read as a run store ({why})") from None


def _decode_payload(text: Any, file: object) -> Any:
    """A stored JSON text, or a one-line ValueError for one nested too deeply or not JSON."""
    if not isinstance(text, str):
        raise ValueError(f"{file} holds a JSON column that is not text; not a store unstuck wrote")
    try:
        return _decode_json(text)
    except RecursionError:
        raise ValueError(
            f"{file} holds JSON nested deeper than Python parses (~1000 levels); "
            "it is not a run store unstuck wrote"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{file} holds a payload that is not JSON ({exc})") from None


def _run_pk(conn: sqlite3.Connection, file: str | os.PathLike[str], run_id: str | None) -> int:
    if run_id is None:
        rows = _query(conn, file, "SELECT id FROM runs ORDER BY id DESC LIMIT 1")
        if not rows:
            raise ValueError(f"run store {file} holds no runs yet")
    else:
        rows = _query(conn, file, "SELECT id FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            known = [r[0] for r in _query(conn, file, "SELECT run_id FROM runs ORDER BY id")]
            raise ValueError(f"no run {run_id!r} in {file}; known runs: {known}")
    return int(rows[0][0])


def read_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run in the store, oldest first: run_id, started_at, ended_at, status, meta.

    A run whose status is still ``"running"`` with no writer alive was interrupted.
    """
    conn = _connect_read(path)
    try:
        rows = _query(
            conn, path, "SELECT run_id, started_at, ended_at, status, meta FROM runs ORDER BY id"
        )
    finally:
        conn.close()
    return [
        {
            "run_id": r,
            "started_at": s,
            "ended_at": e,
            "status": st,
            "meta": _decode_payload(m, path),
        }
        for r, s, e, st, m in rows
    ]


def read_meta(path: str | os.PathLike[str], run_id: str | None = None) -> dict[str, Any]:
    """The metadata of ``run_id`` (the latest run by default), as of its last flush."""
    conn = _connect_read(path)
    try:
        pk = _run_pk(conn, path, run_id)
        ((meta,),) = _query(conn, path, "SELECT meta FROM runs WHERE id = ?", (pk,))
    finally:
        conn.close()
    decoded: dict[str, Any] = _decode_payload(meta, path)
    return decoded


def read_metrics(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, tuple[list[int], list[float]]]:
    """Metric series of one run as ``{name: (steps, values)}``, ordered by step."""
    conn = _connect_read(path)
    try:
        pk = _run_pk(conn, path, run_id)
        sql = "SELECT name, step, value FROM metrics WHERE run = ?"
        params: list[Any] = [pk]
        if names is not None:
            wanted = list(names)
            sql += f" AND name IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        rows = _query(conn, path, sql + " ORDER BY name, step, rowid", params)
    finally:
        conn.close()
    out: dict[str, tuple[list[int], list[float]]] = {}
    for name, step, value in rows:
        steps, values = out.setdefault(name, ([], []))
        steps.append(int(step))
        values.append(_from_real(value))
    return out


def read_events(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """Events of one run in write order, each ``{"kind", "step", "payload", "seq", "time"}``."""
    conn = _connect_read(path)
    try:
        pk = _run_pk(conn, path, run_id)
        sql = "SELECT seq, kind, step, time, payload FROM events WHERE run = ?"
        params: list[Any] = [pk]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        rows = _query(conn, path, sql + " ORDER BY seq", params)
    finally:
        conn.close()
    return [
        {"kind": k, "step": int(s), "payload": _decode_payload(p, path), "seq": int(q), "time": t}
        for q, k, s, t, p in rows
    ]
