"""Finding the runs under the paths ``unstuck watch`` is given, again at every refresh.

A folder is one run when it holds a run's log itself (``unstuck.sqlite``, ``trainer_state.json``
or ``checkpoint-N/trainer_state.json``, ``metrics.csv``, event files, or event files in a
``train/`` split folder); otherwise each sub-folder is looked into (down to ``MAX_DEPTH``) and
each loose log file (``.csv``, ``.jsonl``, ``.log``, ``.txt``, ``.json``, ``.sqlite``) is a run
of its own. ``mlflow:NAME`` lists the runs of the MLflow experiment NAME (``mlflow:`` alone:
every experiment) at ``--tracking-uri``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unstuck.fleet.tail import SPLIT_PREFIXES

__all__ = ["MLFLOW_PREFIX", "RunSource", "SourceError", "discover", "mlflow_client"]

MLFLOW_PREFIX = "mlflow:"
MAX_DEPTH = 4  # folders below a watched path that are looked into for runs
LOG_SUFFIXES = frozenset({".csv", ".jsonl", ".log", ".txt", ".sqlite"})  # loose files read as runs
SKIP_DIRS = frozenset({".git", "__pycache__", "checkpoints", ".hydra", "wandb"})
MLFLOW_RUN_LIMIT = 1000  # runs listed per experiment


class SourceError(ValueError):
    """A watched path that is not there or not a fleet: the one-line CLI error."""


@dataclasses.dataclass(frozen=True)
class RunSource:
    """One run to watch: where it is and how to read it (``error`` when it cannot be)."""

    name: str
    fmt: str
    path: str
    run_id: str | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.path}#{self.run_id or ''}"


def _is_run_dir(d: Path, names: set[str]) -> str | None:
    from unstuck.analyze.tensorboard_events import EVENT_PREFIX
    from unstuck.record.store import STORE_FILENAME

    if STORE_FILENAME in names:
        return "unstuck"
    if "trainer_state.json" in names or any(
        n.startswith("checkpoint-") and (d / n / "trainer_state.json").is_file() for n in names
    ):
        return "hf"
    if "metrics.csv" in names:
        return "lightning"
    if any(n.startswith(EVENT_PREFIX) for n in names):
        return "tensorboard"
    for split in SPLIT_PREFIXES:
        if split in names:
            try:
                if any(n.startswith(EVENT_PREFIX) for n in os.listdir(d / split)):
                    return "tensorboard"
            except OSError:
                pass
    return None


def _file_source(file: Path, name: str) -> RunSource:
    from unstuck.analyze import detect_format

    try:
        fmt = detect_format(file)
    except (ValueError, OSError) as exc:
        return RunSource(name, "?", str(file), error=str(exc))
    if fmt == "mlflow":
        why = f"an MLflow store: watch it as mlflow:EXPERIMENT --tracking-uri {file}"
        return RunSource(name, fmt, str(file), error=why)
    return RunSource(name, fmt, str(file))


def _walk(
    root: Path, d: Path, depth: int, out: list[RunSource], known: Mapping[str, RunSource]
) -> None:
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError as exc:
        out.append(RunSource(_name(root, d), "?", str(d), error=f"cannot list: {exc.strerror}"))
        return
    names = {e.name for e in entries}
    fmt = _is_run_dir(d, names)
    if fmt is not None:
        out.append(RunSource(_name(root, d), fmt, str(d)))
        return
    for e in entries:
        if e.name.startswith(".") or e.name in SKIP_DIRS:
            continue
        p = Path(e.path)
        if e.is_dir() and depth < MAX_DEPTH:
            _walk(root, p, depth + 1, out, known)
        elif e.is_file() and p.suffix.lower() in LOG_SUFFIXES:
            seen = known.get(str(p))  # a file's format is sniffed once, not at every refresh
            out.append(seen if seen is not None else _file_source(p, _name(root, p)))


def _name(root: Path, p: Path) -> str:
    if p == root:
        return p.name or str(p)
    rel = p.relative_to(root).as_posix()
    return f"{root.name}/{rel}" if root.name else rel


def mlflow_client(tracking_uri: str | None) -> Any:
    """An MLflow client; a local SQLite file as the tracking URI is read as ``sqlite:///``."""
    from unstuck.analyze._common import require
    from unstuck.analyze.mlflow_run import sqlite_uri

    if tracking_uri and "://" not in tracking_uri and Path(tracking_uri).is_file():
        tracking_uri = sqlite_uri(tracking_uri)
    tracking = require("mlflow.tracking", "mlflow")
    return tracking.MlflowClient(tracking_uri=tracking_uri)


def _mlflow(spec: str, client: Any) -> list[RunSource]:
    name = spec[len(MLFLOW_PREFIX) :]
    try:
        if name:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                known = sorted(e.name for e in client.search_experiments())
                raise SourceError(f"no MLflow experiment {name!r}; known: {', '.join(known)}")
            experiments = [experiment]
        else:
            experiments = list(client.search_experiments())
        out = []
        for exp in experiments:
            runs = client.search_runs([exp.experiment_id], max_results=MLFLOW_RUN_LIMIT)
            for r in runs:
                label = r.info.run_name or r.info.run_id
                out.append(RunSource(f"{exp.name}/{label}", "mlflow", spec, r.info.run_id))
        return out
    except SourceError:
        raise
    except Exception as exc:  # the tracking store's errors come in many types
        why = f"{type(exc).__name__}: {exc}"
        raise SourceError(f"cannot list MLflow runs of {spec}: {why}") from None


def discover(
    paths: list[str], client: Any = None, known: Mapping[str, RunSource] | None = None
) -> list[RunSource]:
    """Every run under ``paths`` (folders, log files, ``mlflow:NAME``), in path order.

    ``known`` maps the paths of loose files found before to their readable sources: their
    format is not sniffed again.

    Raises :class:`SourceError` for a path that does not exist; a file whose format is unknown
    is a run with ``error`` set, shown as unreadable rather than stopping the watch.
    """
    out: list[RunSource] = []
    for spec in paths:
        if spec.startswith(MLFLOW_PREFIX):
            if client is None:
                raise SourceError(f"{spec}: MLflow needs a client (pass --tracking-uri)")
            out += _mlflow(spec, client)
            continue
        p = Path(spec)
        if not p.exists():
            raise SourceError(f"{spec}: no such file or folder")
        if p.is_file():
            out.append(_file_source(p, p.name))
        else:
            _walk(p, p, 0, out, known or {})
    seen: set[str] = set()
    unique = []
    for s in out:
        if s.key not in seen:
            seen.add(s.key)
            unique.append(s)
    return unique
