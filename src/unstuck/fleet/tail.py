"""Incremental readers: each refresh hands back only the loss points a run logged since the last.

One reader per run, kept between refreshes. Each answers :meth:`Tail.poll` with the new points of
the run's training loss (the validation loss when the log has no training loss), and counts in
``points_read`` every point it parsed, so a test or a bench can see that nothing old was re-read.

How each format is read (docs/watch.md repeats this):

* unstuck run store: ``SELECT ... WHERE step > last`` on a read-only connection, skipped
  outright while the store's files keep their (size, mtime);
* CSV (Lightning ``metrics.csv``, Keras ``CSVLogger``, any CSV of metrics) and JSON lines: from
  the byte offset where the last refresh stopped, whole lines only; a file that shrank or whose
  header changed (Lightning rewrites its CSV when a new metric appears) is read again from the
  start and the run's detector starts over;
* TensorBoard: TensorBoard's own event-file loader, kept open, yields only the records appended
  since the last refresh; new event files in the run folder are picked up;
* HF ``trainer_state.json``, printed logs (text) and anything else: skipped while the file keeps
  its (size, mtime), re-read whole when it changes, and only points after the last step fed on;
* MLflow: the metric history is fetched again at each refresh while the run is active, once
  more after it ended, then never.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unstuck.analyze.names import EPOCH_KEYS, STEP_KEYS, canonical_names, name_key

__all__ = [
    "CsvTail",
    "JsonLinesTail",
    "MlflowTail",
    "Poll",
    "ReloadTail",
    "StoreTail",
    "Tail",
    "TailError",
    "TensorBoardTail",
    "loss_name",
    "tail_for",
]

logger = logging.getLogger(__name__)

LOSS_ORDER = ("loss", "val_loss")  # the series watched: the training loss, else the validation
SPLIT_PREFIXES = ("train", "training")  # TensorBoard split folders read as part of their run
MLFLOW_DONE = frozenset({"FINISHED", "FAILED", "KILLED"})  # MLflow run statuses that are final
STORE_RUNNING = "running"  # a run store's status while its writer is (or was, if killed) live


class TailError(ValueError):
    """A run that cannot be read: the message is the one line the table shows."""


@dataclasses.dataclass
class Poll:
    """What one refresh found in one run."""

    steps: list[int] = dataclasses.field(default_factory=list)
    values: list[float] = dataclasses.field(default_factory=list)
    reset: bool = False  # the source was rewritten: forget what was fed and start over
    finished: bool = False  # the source says the run has ended
    modified: float | None = None  # when the source last changed (epoch seconds), if known


def loss_name(raw_names: Iterable[str]) -> str | None:
    """The raw name of the series watched, by the analyze name table (``names.py``)."""
    names = [n for n in raw_names if n]
    mapping = canonical_names(names)
    for canonical in LOSS_ORDER:
        for raw, name in mapping.items():
            if name == canonical:
                return raw
    return None


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return tuple(out)


def _mtime(paths: Sequence[Path]) -> float | None:
    times = []
    for p in paths:
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times) if times else None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


class Tail:
    """A run's reader. ``points_read`` counts every point parsed, re-reads included."""

    incremental = True  # False where a changed source is read again whole

    def __init__(self) -> None:
        self.points_read = 0
        self.last_step: int | None = None  # the last step handed out

    def poll(self) -> Poll:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the reader holds open."""

    def _after_last(self, steps: Sequence[int], values: Sequence[float], out: Poll) -> None:
        """Keep the points past the last step handed out (a re-read source sends them all)."""
        for s, v in zip(steps, values):
            if self.last_step is None or s > self.last_step:
                out.steps.append(s)
                out.values.append(v)
                self.last_step = s


class StoreTail(Tail):
    """An unstuck run store (its latest run): ``WHERE step > last`` on a read-only connection."""

    def __init__(self, path: str | os.PathLike[str], run_id: str | None = None) -> None:
        super().__init__()
        from unstuck.record.store import STORE_FILENAME

        p = Path(path)
        self.file = p / STORE_FILENAME if p.is_dir() else p
        self.run_id = run_id
        self._files = [self.file, Path(f"{self.file}-wal")]
        self._seen: tuple[tuple[int, int], ...] | None = None
        self._name: str | None = None
        self._finished = False

    def poll(self) -> Poll:
        out = Poll(modified=_mtime(self._files))
        sig = _signature(self._files)
        if sig == self._seen:
            out.finished = self._finished
            return out
        try:
            conn = sqlite3.connect(f"{self.file.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as exc:
            raise TailError(f"cannot open {self.file}: {exc}") from None
        try:
            if self.run_id is None:
                latest = "SELECT id, status FROM runs ORDER BY id DESC LIMIT 1"
                row = conn.execute(latest).fetchone()
            else:
                row = conn.execute(
                    "SELECT id, status FROM runs WHERE run_id = ?", (self.run_id,)
                ).fetchone()
            if row is None:
                raise TailError(f"{self.file} holds no run yet")
            pk, status = int(row[0]), str(row[1])
            if self._name is None:
                for name in LOSS_ORDER:
                    hit = conn.execute(
                        "SELECT 1 FROM metrics WHERE run = ? AND name = ? LIMIT 1", (pk, name)
                    ).fetchone()
                    if hit is not None:
                        self._name = name
                        break
            if self._name is not None:
                last = -math.inf if self.last_step is None else self.last_step
                rows = conn.execute(
                    "SELECT step, value FROM metrics WHERE run = ? AND name = ? AND step > ? "
                    "ORDER BY step, rowid",
                    (pk, self._name, last),
                ).fetchall()
                self.points_read += len(rows)
                for step, value in rows:
                    out.steps.append(int(step))
                    out.values.append(math.nan if value is None else float(value))
                if rows:
                    self.last_step = out.steps[-1]
        except sqlite3.DatabaseError as exc:
            raise TailError(f"{self.file} is not a readable run store ({exc})") from None
        finally:
            conn.close()
        self._finished = out.finished = status != STORE_RUNNING
        self._seen = sig
        return out


class _LineTail(Tail):
    """A text file read from the byte offset the last refresh stopped at, whole lines only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.file = Path(path)
        self._offset = 0
        self._head = b""  # the first line, to tell a rewritten file from a grown one
        self._seen: tuple[tuple[int, int], ...] | None = None
        self._row = 0  # lines parsed, the x axis of a log without a step

    def _restart(self) -> None:
        self._offset = 0
        self._head = b""
        self._row = 0
        self.last_step = None

    def poll(self) -> Poll:
        sig = _signature([self.file])
        out = Poll(modified=_mtime([self.file]))
        if sig[0][0] < 0:
            raise TailError(f"{self.file} is gone")
        if sig == self._seen:
            return out
        with self.file.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            first = fh.readline() if self._head else b""
            if self._head and (size < self._offset or first != self._head):
                self._restart()
                out.reset = True
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n")
        self._seen = sig  # a line still being written changes the size when it is done
        if end < 0:
            return out
        chunk = chunk[: end + 1]
        if self._offset == 0:
            self._head = chunk.split(b"\n", 1)[0] + b"\n"
        self._offset += len(chunk)
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise TailError(f"{self.file} is not a text file") from None
        self._parse(text.splitlines(), out)
        return out

    def _parse(self, lines: list[str], out: Poll) -> None:
        raise NotImplementedError


class CsvTail(_LineTail):
    """CSV logs (Lightning, Keras, generic) by file offset; the header is read once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._header: list[str] | None = None
        self._loss = -1
        self._x = -1

    def _restart(self) -> None:
        super()._restart()
        self._header = None

    def _parse(self, lines: list[str], out: Poll) -> None:
        rows = csv.reader(io.StringIO("\n".join(lines)))
        if self._header is None:
            header = next(rows, None)
            if not header:
                raise TailError(f"{self.file} has no CSV header")
            self._header = [h.strip() for h in header]
            loss = loss_name(self._header)
            if loss is None:
                raise TailError(f"{self.file}: no loss column in {', '.join(self._header[:8])}")
            self._loss = self._header.index(loss)
            keys = [name_key(h) for h in self._header]
            self._x = next((keys.index(k) for k in (*STEP_KEYS, *EPOCH_KEYS) if k in keys), -1)
        for row in rows:
            if len(row) <= self._loss:
                continue
            self.points_read += 1
            value = _number(row[self._loss])
            if value is None:
                continue  # a validation row of a Lightning CSV, a blank cell
            self._row += 1
            x = _number(row[self._x]) if 0 <= self._x < len(row) else None
            step = round(x) if x is not None and math.isfinite(x) else self._row
            self._after_last([step], [value], out)


class JsonLinesTail(_LineTail):
    """JSON lines by file offset: each new whole line one record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._loss: str | None = None

    def _restart(self) -> None:
        super()._restart()
        self._loss = None

    def _parse(self, lines: list[str], out: Poll) -> None:
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line
            if not isinstance(obj, dict):
                continue
            self.points_read += 1
            if self._loss is None:
                self._loss = loss_name(str(k) for k in obj)
            value = _number(obj.get(self._loss)) if self._loss is not None else None
            if value is None:
                continue
            self._row += 1
            keys = {name_key(str(k)): v for k, v in obj.items()}
            x = next((_number(keys[k]) for k in (*STEP_KEYS, *EPOCH_KEYS) if k in keys), None)
            step = round(x) if x is not None and math.isfinite(x) else self._row
            self._after_last([step], [value], out)


class ReloadTail(Tail):
    """Any format analyze reads, re-read whole when its files change (HF, printed logs)."""

    incremental = False

    def __init__(self, path: str, fmt: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.fmt = fmt
        self._seen: tuple[tuple[int, int], ...] | None = None

    def _files(self) -> list[Path]:
        p = Path(self.path)
        if self.fmt == "hf":
            from unstuck.analyze.hf_trainer import find_state_file

            found = find_state_file(p)
            return [found] if found is not None else [p]
        return [p]

    def poll(self) -> Poll:
        from unstuck.analyze import load

        files = self._files()
        sig = _signature(files)
        out = Poll(modified=_mtime(files))
        if sig == self._seen:
            out.finished = self._finished
            return out
        try:
            run = load(self.path, fmt=self.fmt)
        except (ValueError, OSError) as exc:
            raise TailError(str(exc)) from None
        self._seen = sig
        name = next((n for n in LOSS_ORDER if n in run.series), None)
        if name is None:
            raise TailError(f"no loss series in {self.path} ({', '.join(sorted(run.series))})")
        steps, values = run.series[name]
        self.points_read += int(steps.size)
        self._after_last([int(s) for s in steps.tolist()], values.tolist(), out)
        meta = run.meta
        max_steps, global_step = meta.get("max_steps"), meta.get("global_step")
        self._finished = bool(
            "hf_summary" in meta
            or (isinstance(max_steps, int) and max_steps > 0 and (global_step or 0) >= max_steps)
        )
        out.finished = self._finished
        return out

    _finished = False


class TensorBoardTail(Tail):
    """A TensorBoard run folder: one open event-file loader per file, read where it stopped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.dir = Path(path)
        self._loaders: dict[Path, tuple[str, Any]] = {}
        self._pending: dict[str, tuple[list[int], list[float]]] = {}
        self._tag: str | None = None

    def _event_files(self) -> list[tuple[Path, str]]:
        from unstuck.analyze.tensorboard_events import EVENT_PREFIX

        found: list[tuple[Path, str]] = []
        if self.dir.is_file():
            return [(self.dir, "")]
        for folder, prefix in [(self.dir, ""), *((self.dir / s, s + "/") for s in SPLIT_PREFIXES)]:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            found += [
                (Path(e.path), prefix)
                for e in entries
                if e.name.startswith(EVENT_PREFIX) and e.is_file()
            ]
        return found

    def poll(self) -> Poll:
        from unstuck.analyze._common import require

        loaders = require("tensorboard.backend.event_processing.event_file_loader", "tensorboard")

        files = self._event_files()
        out = Poll(modified=_mtime([f for f, _ in files]))
        for file, prefix in files:
            if file not in self._loaders:
                self._loaders[file] = (prefix, loaders.LegacyEventFileLoader(str(file)))
        for _file, (prefix, loader) in self._loaders.items():
            try:
                for event in loader.Load():
                    self._event(event, prefix)
            except Exception as exc:  # a torn record is retried by the loader itself
                logger.debug("tensorboard read of %s stopped: %s", _file, exc)
        if self._tag is None:
            self._tag = loss_name(self._pending)
        if self._tag is not None and self._tag in self._pending:
            steps, values = self._pending.pop(self._tag)
            order = sorted(range(len(steps)), key=steps.__getitem__)
            self._after_last([steps[i] for i in order], [values[i] for i in order], out)
        if self._tag is not None:
            self._pending.clear()
        return out

    def _event(self, event: Any, prefix: str) -> None:
        if not event.HasField("summary"):
            return
        for v in event.summary.value:
            tag = prefix + v.tag
            if self._tag is not None and tag != self._tag:
                continue
            if self._tag is None and "loss" not in tag.lower():
                continue
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                value = float(v.simple_value)
            elif kind == "tensor" and v.metadata.plugin_data.plugin_name == "scalars":
                from unstuck.analyze._common import require

                tensor_util = require("tensorboard.util.tensor_util", "tensorboard")
                array = tensor_util.make_ndarray(v.tensor)
                if array.size != 1:
                    continue
                value = float(array.reshape(-1)[0])
            else:
                continue
            self.points_read += 1
            steps, values = self._pending.setdefault(tag, ([], []))
            steps.append(int(event.step))
            values.append(value)


class MlflowTail(Tail):
    """One MLflow run: its loss history fetched while it is active, then once after it ended."""

    incremental = False

    def __init__(self, client: Any, run_id: str) -> None:
        super().__init__()
        self.client = client
        self.run_id = run_id
        self._done = False
        self._key: str | None = None
        self._modified: float | None = None

    def poll(self) -> Poll:
        if self._done:
            return Poll(finished=True, modified=self._modified)
        try:
            run = self.client.get_run(self.run_id)
            if self._key is None:
                self._key = loss_name(run.data.metrics)
            if self._key is None:
                raise TailError(f"MLflow run {self.run_id} has no loss metric")
            history = self.client.get_metric_history(self.run_id, self._key)
        except TailError:
            raise
        except Exception as exc:  # the tracking server's errors come in many types
            raise TailError(f"MLflow run {self.run_id}: {type(exc).__name__}: {exc}") from None
        history = sorted(history, key=lambda m: (m.step, m.timestamp))
        self.points_read += len(history)
        out = Poll()
        self._after_last([int(m.step) for m in history], [float(m.value) for m in history], out)
        if history:
            self._modified = max(m.timestamp for m in history) / 1000.0
        out.modified = self._modified
        out.finished = self._done = run.info.status in MLFLOW_DONE
        return out


def tail_for(fmt: str, path: str, run_id: str | None = None, client: Any = None) -> Tail:
    """The reader of one discovered run."""
    if fmt == "unstuck":
        return StoreTail(path, run_id)
    if fmt == "tensorboard":
        return TensorBoardTail(path)
    if fmt == "mlflow":
        if client is None or run_id is None:
            raise TailError("an MLflow run needs its client and run id")
        return MlflowTail(client, run_id)
    if fmt in ("lightning", "keras", "csv"):
        p = Path(path)
        if p.is_dir():
            p = p / "metrics.csv"
        return CsvTail(p)
    if fmt == "jsonl":
        return JsonLinesTail(path)
    return ReloadTail(path, fmt)
